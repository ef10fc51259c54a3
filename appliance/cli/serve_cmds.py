"""`serve` (HTTP API and web UI) and `ask` (one answer on the command line)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, UsageError
from ._context import CliContext, emit_json, pass_ctx, require_home


def open_runtime(ctx: CliContext, *, load_models: bool = True, watchdog: bool = True) -> Any:
    from ..serve.runtime import Runtime

    require_home(ctx)
    return Runtime.open(
        ctx.settings(),
        ctx.passphrase(),
        load_models=load_models,
        watchdog=watchdog,
        actor=ctx.actor(),
    )


def report_models(runtime: Any) -> None:
    """One line per installed model: loaded, or locked with the reason."""
    states = runtime.models.states()
    if not states:
        click.echo("models: none installed; answers are extractive", err=True)
    for s in states:
        if s.loaded:
            click.echo(
                f"model {s.name}: loaded (policy {s.policy_id}, binding {s.binding})", err=True
            )
        else:
            click.echo(f"model {s.name}: LOCKED [{s.reason_code}] {s.reason}", err=True)
    _, model, reason = runtime.engine.mode()
    label = f"generative with {model}" if model else f"extractive ({reason})"
    click.echo(f"answer mode: {label}", err=True)


@click.command()
@click.option("--host", help="Address to listen on (default from settings: serve.host).")
@click.option("--port", type=int, help="Port to listen on (default from settings: serve.port).")
@click.option("--no-ui", is_flag=True, help="Serve the HTTP API only, without the web UI.")
@pass_ctx
def serve(ctx: CliContext, host: str | None, port: int | None, no_ui: bool) -> None:
    """Start the appliance: unlock the home, load permitted models, serve API (and web UI)."""
    import uvicorn

    settings = ctx.settings()
    s = settings.serve
    tls = _tls_files(s.tls_cert, s.tls_key)
    runtime = open_runtime(ctx)
    report_models(runtime)
    from ..serve.server import build_app, proxy_options, start_heartbeat

    app = build_app(runtime, ui=s.ui and not no_ui)
    stop_heartbeat = start_heartbeat(runtime)
    if s.watch_drop:
        runtime.uploads.watch_drop(settings.ingest.watch_interval_s)
        click.echo(f"watching the drop folder {settings.drop_dir}", err=True)
    scheme = "https" if tls else "http"
    bind_host, bind_port = host or s.host, port or s.port
    click.echo(f"serving on {scheme}://{bind_host}:{bind_port}/", err=True)
    # uvicorn stops gracefully on SIGTERM (systemd, docker stop) and then raises the signal
    # again for its default handler, which would end the process before the cleanup below
    # (the web UI's cached uploads in /dev/shm among it): exit through `finally` instead, with
    # status 0, as a stop that was asked for and done (systemd marks 143 as a failure).
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(
            app,
            host=bind_host,
            port=bind_port,
            log_level="warning",
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
            timeout_graceful_shutdown=10,
            **proxy_options(s),
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_heartbeat()
        runtime.close()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _tls_files(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError(
            "TLS needs both serve.tls_cert and serve.tls_key.", hint="Set both or neither."
        )
    for path in (cert, key):
        if not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist.", hint="Fix serve.tls_cert/key.")
    return cert, key


@click.command()
@click.argument("question")
@click.option("--user", "user_name", required=True, help="Answer as this user (their groups).")
@click.option("--model", help="Demand this model (fails with the reason when it is locked).")
@click.option("--extractive", is_flag=True, help="Answer extractively, without a model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def ask(
    ctx: CliContext,
    question: str,
    user_name: str,
    model: str | None,
    extractive: bool,
    as_json: bool,
) -> None:
    """Answer QUESTION from the documents USER may see, with numbered sources."""
    if model and extractive:
        raise UsageError("Use either --model or --extractive.")
    runtime = open_runtime(ctx, watchdog=False)
    try:
        user = runtime.app.users.get(user_name)
        if user.disabled:
            raise UsageError(f"User {user_name} is disabled.")
        events = runtime.engine.stream(
            question,
            user=user,
            model=model,
            require_model=bool(model),
            extractive=extractive,
            channel="cli",
        )
        answer = _print_stream(events, stream=not as_json)
    finally:
        runtime.close()
    if as_json:
        emit_json(answer.to_dict())
    else:
        _print_sources(answer)


def _print_stream(events: Any, *, stream: bool) -> Any:
    answer = None
    for event in events:
        if event.kind == "delta" and stream:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif event.kind == "done":
            answer = event.answer
    if stream:
        sys.stdout.write("\n")
    return answer


def _print_sources(answer: Any) -> None:
    click.echo(
        f"\n[{answer.label}]" + (f" ({answer.fallback_reason})" if answer.fallback_reason else "")
    )
    for s in answer.sources:
        mark = "*" if s.n in answer.cited else " "
        page = f", p. {s.page_start}" if s.page_start else ""
        section = f" › {' > '.join(s.section)}" if s.section else ""
        click.echo(f"{mark}[{s.n}] {s.document}{page}{section} ({s.group})")
