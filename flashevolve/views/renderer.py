"""How Altair charts draw in a notebook: offline, from the JavaScript vl-convert bundles.

Altair's "default" renderer writes an HTML output that fetches Vega, Vega-Lite and Vega-Embed
from a CDN when the output is shown.  Without a network (CI, a closed lab, a laptop on a train)
every chart then fails in JupyterLab with "Error loading script", and even with one, the chart
depends on a third-party host.  In a Jupyter kernel, and only while the user has not chosen a
renderer, flashevolve therefore switches Altair to its own "jupyter" renderer in offline mode:
each chart is an anywidget whose JavaScript is the bundle vl-convert ships for the Vega-Lite
version Altair writes (the same bundle the offline HTML report inlines), drawn as SVG.

The price: such a chart is a live widget, so a notebook saved and reopened without re-running
shows it only if the widget state was saved with it (JupyterLab: *Settings → Save Widget State
Automatically*).  The HTML report and :func:`~flashevolve.views.save_chart` are the way to keep
charts.  To keep Altair's own choice, enable a renderer after importing the charts, e.g.
``alt.renderers.enable("default")``.
"""

from __future__ import annotations

import altair as alt

#: What the charts are drawn with in a kernel (SVG, like the report: marks are DOM elements,
#: and the chart's menu still exports PNG).
EMBED_OPTIONS = {"renderer": "svg"}


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, VS Code, nbmake), False elsewhere."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def use_offline_charts(force: bool = False) -> bool:
    """Draw Altair charts offline in this kernel (see the module doc); returns whether it did.

    Does nothing outside a kernel, or when a renderer other than Altair's "default" is active
    (the user chose one), unless ``force``.
    """
    if not in_jupyter_kernel():
        return False
    if alt.renderers.active != "default" and not force:
        return False
    try:
        import anywidget  # noqa: F401 -- what Altair's "jupyter" renderer draws with
    except ImportError:  # a trimmed install: Altair's own renderer it is
        return False
    alt.renderers.enable("jupyter", offline=True, embed_options=EMBED_OPTIONS)
    return True


__all__ = ["EMBED_OPTIONS", "in_jupyter_kernel", "use_offline_charts"]
