"""featx command line (installed as the import package `featx_cli`)."""
