"""The `streetblur` command line (`jobs.cli.main`). The library never imports it."""
