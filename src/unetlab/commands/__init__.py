"""One module per CLI verb: ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)``, ``run(args)``."""
