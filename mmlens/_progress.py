"""Progress bars for every mmlens loop: a live bar on a terminal or in Jupyter, periodic lines elsewhere."""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["LINE_INTERVAL", "progress_bar", "write_line"]

#: Seconds between two progress lines when the output is not a terminal (log files, CI, ``nohup``).
LINE_INTERVAL = 30.0


def _in_jupyter() -> bool:
    """Whether this runs in a Jupyter kernel (its stderr is no terminal, yet the widget bar works)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Lines:
    """A text stream that lets whole lines through and drops the blank ones tqdm adds on closing."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.at_line_start = stream, True

    def write(self, text: str) -> int:
        if not text.strip() and self.at_line_start:
            return 0
        self.at_line_start = text.endswith("\n")
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def _line_bar_class():
    from tqdm import tqdm

    class LineBar(tqdm):
        """tqdm that prints its status as whole lines, at most every ``mininterval`` s, and at the end.

        Carriage-return redraws become one line per redraw in a log file; here each line stands alone.
        Its stream is wrapped (:class:`_Lines`), so ``tqdm.write`` does not redraw it after every message.
        """

        _shown: float | None = None  # the count of the last line printed
        _shown_at = float("-inf")

        def clear(self, nolock: bool = False) -> None:  # nothing was drawn in place: nothing to erase
            pass

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            # refresh() (set_postfix, tqdm.write) calls this at any time: print only what is new and due;
            # tqdm sets disable before its last display in close()
            now = self._time()
            due = now - self._shown_at >= self.mininterval or self.disable
            if msg is None and (self.n == self._shown or not due):
                return True
            self._shown, self._shown_at = self.n, now
            self.fp.write((msg or self.__str__()).strip() + "\n")
            self.fp.flush()
            return True

    return LineBar


def progress_bar(iterable: Any = None, *, total: int | None = None, desc: str | None = None, unit: str = "it",
                 enabled: bool = True, initial: int = 0, leave: bool = True, file: TextIO | None = None):
    """A tqdm progress bar that suits where its output goes.

    On a terminal: the usual bar, redrawn in place. In Jupyter: tqdm's notebook widget. Anywhere else
    (stderr redirected to a file, CI logs, a pipe): one status line every :data:`LINE_INTERVAL` seconds
    and one at the end, instead of thousands of carriage-return redraws. ``enabled=False`` shows nothing.

    Parameters
    ----------
    iterable, total, desc, unit, initial, leave
        As for ``tqdm.tqdm``.
    enabled
        False disables the bar (it still counts).
    file
        Where the bar goes (default ``sys.stderr``, read at call time).

    Examples
    --------
    >>> import io
    >>> log = io.StringIO()  # not a terminal: whole lines only
    >>> bar = progress_bar(total=3, desc="trace", file=log)
    >>> bar.update(3); bar.close()
    >>> print(log.getvalue().splitlines()[-1][:22])
    trace: 100%|██████████
    >>> "\\r" in log.getvalue()
    False
    """
    stream = sys.stderr if file is None else file
    if not enabled:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=True)
    if file is None and _in_jupyter():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    if _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream)
    return _line_bar_class()(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=True,
                             file=_Lines(stream), mininterval=LINE_INTERVAL, ascii=False, dynamic_ncols=False, ncols=80)


def write_line(line: str, *, file: TextIO | None = None) -> None:
    """Print one line (to ``sys.stderr`` by default) without breaking any progress bar being drawn.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> write_line("skipped a.jpg: truncated", file=out)
    >>> out.getvalue()
    'skipped a.jpg: truncated\\n'
    """
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr if file is None else file)
