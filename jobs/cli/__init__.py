"""The `streetblur` command line (`jobs.cli.main`): one module per command or group of commands, which
parses its options and calls the library. The library never imports it."""
