"""The pieces of :func:`weightspace.train.train`, one concept a module: its configuration
(:mod:`.config`), data (:mod:`.data`), function targets (:mod:`.function_targets`), views
(:mod:`.views`), losses (:mod:`.losses`), optimiser (:mod:`.optim`), validation
(:mod:`.validation`), files (:mod:`.records`) and data parallelism (:mod:`.distributed`).
The loop itself, and the public names, live in :mod:`weightspace.train`."""
