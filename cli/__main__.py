from featx_cli.main import entry

entry()
