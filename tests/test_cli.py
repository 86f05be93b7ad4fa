from featx_cli.main import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ["data", "weights", "extract", "train-head", "evaluate", "predict", "fine-tune", "export"]:
        assert cmd in out
