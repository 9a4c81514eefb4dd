"""TensorBoard itself, in-process: its event loader, data provider, plugins and HTTP routes.

Tests that make a claim about what TensorBoard shows go through this (what ``tensorboard
--logdir`` serves to the browser), never through fodl's own log readers.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


class TensorBoard:
    """``tensorboard --logdir <logdir>`` without a server: the same multiplexer, data provider,
    plugins and WSGI app, queried through werkzeug's test client."""

    def __init__(self, logdir: Path, installed_plugins: bool = False) -> None:
        """``installed_plugins``: also load the plugins installed as packages (e.g. the PyTorch
        profiler's), as ``tensorboard`` does; off by default, since some start background
        processes."""
        from tensorboard import default, program
        from tensorboard.backend import application
        from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
        from werkzeug.test import Client

        self.logdir = str(logdir)
        mux = plugin_event_multiplexer.EventMultiplexer()
        mux.AddRunsFromDirectory(self.logdir)
        mux.Reload()
        provider = data_provider.MultiplexerDataProvider(mux, self.logdir)
        plugins = default.get_plugins() if installed_plugins else default.get_static_plugins()
        tb = program.TensorBoard(plugins=plugins)
        tb.configure(logdir=self.logdir, load_fast="false")
        app = application.TensorBoardWSGIApp(tb.flags, tb.plugin_loaders, provider,
                                             tb.assets_zip_provider, mux)
        self.client = Client(app)

    def get(self, route: str, **params):
        r = self.client.get(route + ("?" + urlencode(params) if params else ""))
        assert r.status_code == 200, (route, r.status_code, r.get_data(as_text=True)[:500])
        return json.loads(r.get_data(as_text=True))

    def post(self, route: str, body: dict):
        r = self.client.post(route, data=json.dumps(body), content_type="application/json")
        assert r.status_code == 200, (route, r.status_code, r.get_data(as_text=True)[:500])
        return json.loads(r.get_data(as_text=True))

    # -- plugins ----------------------------------------------------------------------------
    def runs(self) -> list[str]:
        return self.get("/data/runs")

    def tags(self, plugin: str) -> dict[str, dict]:
        """``{run: {tag: ...}}`` of a plugin (scalars, histograms, images ...)."""
        return self.get(f"/data/plugin/{plugin}/tags")

    def scalars(self, run: str, tag: str) -> list[tuple[int, float]]:
        return [(step, value) for _, step, value in
                self.get("/data/plugin/scalars/scalars", run=run, tag=tag)]

    def hparams_experiment(self) -> dict:
        """What the HPARAMS dashboard asks first: the columns (hparams and metrics)."""
        return self.post("/data/plugin/hparams/experiment",
                         {"experimentName": "", "includeMetrics": True, "hparamsLimit": 1000})

    def session_groups(self) -> list[dict]:
        """What the HPARAMS dashboard lists: one entry per trial, with hparams and metric values
        (every status, every column, as the dashboard asks for them)."""
        exp = self.hparams_experiment()
        cols = [{"hparam": h["name"], "includeInResult": True} for h in exp.get("hparamInfos", [])]
        cols += [{"metric": m["name"], "includeInResult": True} for m in exp.get("metricInfos", [])]
        body = {"experimentName": "", "allowedStatuses": ALL_STATUSES, "colParams": cols,
                "aggregationType": "AGGREGATION_AVG", "startIndex": 0, "sliceSize": 1000,
                "includeMetrics": True}
        return self.post("/data/plugin/hparams/session_groups", body).get("sessionGroups", [])


def metric_values(group: dict) -> dict[str, float]:
    """``{tag: value}`` of a session group's metrics (as the HPARAMS table shows them)."""
    return {m["name"]["tag"]: m["value"] for m in group.get("metricValues", [])}


def hparam_values(group: dict) -> dict:
    return dict(group.get("hparams", {}))
