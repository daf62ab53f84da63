"""The data scientist's pages: runs, one run's charts and refusals, two runs side by side, downloads.

Needs the policy's ``read``. A running job's page polls ``/runs/NAME/progress`` (a small
script served by the console itself) and reloads when a round lands.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from fedcustomer.console.charts import line_chart
from fedcustomer.console.pages import console, guard, render
from fedcustomer.console.runs import Run
from fedcustomer.errors import ConfigError


def charts(run: Run) -> list[object]:
    """One chart per held-out metric, then epsilon per partner, then partners trained/refused."""
    out: list[object] = []
    for column in run.metric_columns:
        out.append(line_chart(column[len("eval_") :], [(run.name, run.series(column))], y_label=column[5:]))
    eps = [(p, run.series(f"epsilon_{p}")) for p in run.partners]
    out.append(line_chart("epsilon per partner", eps, y_label="epsilon spent"))
    counts = [
        (c[len("partners_") :], run.series(c))
        for c in ("partners_trained", "partners_refused", "partners_failed")
    ]
    out.append(line_chart("partners per round", counts, y_label="partners"))
    return out


async def runs_page(request: Request) -> Response:
    _, person = guard(request, "runs")
    folder = console(request).runs
    runs = [folder.load(n, rows=False) for n in folder.names()]
    return render(request, "runs.html", person=person, runs=runs, configured=folder.root is not None)


async def run_page(request: Request) -> Response:
    _, person = guard(request, "runs")
    run = console(request).runs.load(request.path_params["name"])
    return render(request, "run.html", person=person, run=run, charts=charts(run))


async def run_progress(request: Request) -> Response:
    guard(request, "runs")
    run = console(request).runs.load(request.path_params["name"], rows=False)
    return JSONResponse(run.progress(), headers={"Cache-Control": "no-store"})


async def run_file(request: Request) -> Response:
    guard(request, "runs")
    path = console(request).runs.download(request.path_params["name"], request.path_params["file"])
    return FileResponse(path, filename=f"{request.path_params['name']}-{path.name}")


async def compare_page(request: Request) -> Response:
    _, person = guard(request, "runs")
    folder = console(request).runs
    names = [n for n in request.query_params.getlist("run") if n][:4]
    if len(names) < 2:
        raise ConfigError("pick at least two runs to compare")
    runs = [folder.load(n) for n in names]
    metrics = sorted({c for r in runs for c in r.metric_columns})
    overlays = [line_chart(m[5:], [(r.name, r.series(m)) for r in runs], y_label=m[5:]) for m in metrics]
    summary_keys = sorted({k for r in runs for k in (r.summary.get("metrics") or {})})
    return render(
        request, "compare.html", person=person, runs=runs, overlays=overlays, summary_keys=summary_keys
    )


ROUTES = [
    Route("/runs", runs_page),
    Route("/runs/compare", compare_page),
    Route("/runs/{name}", run_page),
    Route("/runs/{name}/progress", run_progress),
    Route("/runs/{name}/files/{file}", run_file),
]
