"""``lenbench viz``: a trained LM's attention terms (a Typer function the CLI registers); the plot
itself is :func:`visualize` (imported when the command runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from lenbench.present.terminal import err


def viz(
    path: Annotated[str, typer.Argument(help="A finished ppl cell folder, or its model.pt.")],
    query: Annotated[int, typer.Option(help="Sequence length; the last position (query - 1) is the query.")] = 8192,
    layer: Annotated[int, typer.Option(help="Layer index (negative counts from the end).")] = 0,
    heads: Annotated[str | None, typer.Option(help="Heads to show, e.g. 0,1,2 (default: all).")] = None,
    out_file: Annotated[
        str | None, typer.Option("--out", help="Image file (default: <cell>/attention_L<layer>_q<query>.png).")
    ] = None,
) -> None:
    """Plot, per head, the attention logits, base bias and DAPE term of one query against all keys."""
    import matplotlib.pyplot as plt

    from lenbench.inspect.viz import visualize

    fig, target = visualize(path, query, layer, heads, out_file)
    plt.close(fig)
    err.print(f"wrote {target}")
