import io

from napari_cryopicker.core.progress import Progress, TerminalBar


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_terminal_bar_draws_on_a_terminal_only():
    tty = _Tty()
    bar = TerminalBar(tty)
    prog = Progress(callback=bar)
    for i in range(0, 11, 5):
        prog.update(i, 10, f"epoch {i}")
    bar.close()
    out = tty.getvalue()
    assert "10/10" in out and "epoch 10" in out and out.endswith("\n")
    log = io.StringIO()  # a batch job's log file: nothing written
    bar = TerminalBar(log)
    bar(3, 10, "x")
    bar.close()
    assert log.getvalue() == ""
