"""Plain-text views of the status levels (for `appliance status`)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def _iso(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    days, rest = divmod(int(seconds), 86_400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m" if days else f"{hours}h {rest // 60}m {rest % 60}s"


def render_status(s: dict[str, Any]) -> str:
    overall = s["overall"]
    lines = [f"Appliance status at {_iso(s['at'])}: {overall['state'].upper()}"]
    lines += [f"  ! [{p['code']}] {p['message']}" for p in overall["problems"]]
    for title, part in (
        ("Component", _component(s["component"])),
        ("Service", _service(s["service"])),
        ("Appliance", _node(s["node"])),
        ("Tasks", _tasks(s["task"])),
    ):
        lines += ["", title, *("  " + line for line in part)]
    return "\n".join(lines)


def _component(c: dict[str, Any]) -> list[str]:
    cpu, mem = c["cpu"], c["memory"]
    out = [
        f"cpu        {cpu['percent']:.0f}% of {cpu['count']} cores, load {cpu['load_avg']}",
        f"memory     {mem['percent']:.0f}% used, {size(mem['available'])} free "
        f"of {size(mem['total'])}",
    ]
    for d in c["disks"]:
        if not d["exists"]:
            out.append(f"disk {d['name']:<6} {d['path']} (missing)")
            continue
        out.append(
            f"disk {d['name']:<6} {size(d['bytes'])} in {d['path']}; filesystem "
            f"{d['fs_percent']:.0f}% used, {size(d['fs_free'])} free"
        )
    gpu = c["gpu"]
    if not gpu["available"]:
        out.append(f"gpu        {gpu['reason']}")
    for g in gpu.get("devices", []):
        out.append(
            f"gpu {g['index']}      {g['name']}: {size(g['memory_used'])} of "
            f"{size(g['memory_total'])}, {g['utilisation_percent']}% busy, {g['temperature_c']} °C"
        )
    for p in c["processes"]:
        state = f"pid {p['pid']}, {size(p.get('rss'))} resident" if p["running"] else p["reason"]
        out.append(f"process    {p['role']}: {state}")
    return out


def _service(sv: dict[str, Any]) -> list[str]:
    m = sv["milvus"]
    reach = {True: "reachable", False: "UNREACHABLE", None: "not checked"}[m.get("reachable")]
    detail = f", {m['rows']} rows" if "rows" in m else ""
    if "disagrees" in m:
        detail += f" (the registry expects {m['expected_rows']})"
    note = m.get("error") or m.get("note") or ""
    out = [
        f"milvus     {m['kind']} {m['uri']} [{m['collection']}]: {reach}{detail} {note}".rstrip()
    ]
    out.append(_dense_memory_line(sv["dense_memory"]))
    if "query_path" in sv:
        out.append(f"queries    embedder {sv['query_path']}")
    if sv["documents"]:
        d = sv["documents"]
        out.append(
            f"documents  {d['indexed']} indexed, {d['failed']} failed, {d['indexing']} in progress"
        )
    ing = sv["ingestion"]
    w = ing["watcher"]
    watcher = f"alive (pid {w['pid']}, {w['passes'] or 0} passes)" if w["alive"] else w["reason"]
    out.append(f"ingestion  watcher {watcher}; {ing['queue']} files waiting ({ing['mode']} mode)")
    if not sv["models"]:
        out.append("models     none installed")
    out += [_model_line(x) for x in sv["models"]]
    a = sv["audit"]
    out.append(
        f"audit log  {'writable' if a['writable'] else 'NOT WRITABLE: ' + a.get('reason', '')}"
    )
    t = sv["tls"]
    tls = (
        t["state"]
        if "days_left" not in t
        else f"{t['state']}, expires {t['not_after']} ({t['days_left']} days)"
    )
    out.append(f"tls        {tls}")
    return out


def _model_line(x: dict[str, Any]) -> str:
    loaded = {True: ", loaded", False: ", not loaded", None: ""}[x.get("loaded")]
    left = x.get("days_left")
    policy = f"policy {x.get('policy') or '-'}, " + (
        "no policy days left"
        if left is None
        else f"{left} days left"
        if left > 0
        else f"ended {-left} days ago"
    )
    if x["state"] == "locked":
        return (
            f"model      {x['name']}: LOCKED [{x['reason_code']}] {x['reason']} ({policy}{loaded})"
        )
    return f"model      {x['name']}: unlockable ({policy}{loaded})"


def _node(n: dict[str, Any]) -> list[str]:
    srv = n["server"]
    server = (
        f"running, pid {srv['pid']}, up {duration(srv['uptime_s'])}"
        if srv["running"]
        else srv["reason"]
    )
    out = [
        f"version    {n['version']} (Python {n['python']}), host up {duration(n['host_uptime_s'])}",
        f"server     {server}",
        "settings   " + ", ".join(f"{k}={v}" for k, v in n["settings"].items()),
    ]
    if not n["last_errors"]:
        out.append("errors     none recorded")
    for e in n["last_errors"]:
        out.append(f"error      {_iso(e['at'])} {e['kind']} [{e['code']}] {e['detail']}")
    return out


def _tasks(t: dict[str, Any]) -> list[str]:
    s = t["summary"]
    out = [
        f"questions  {s['questions']} recent: retrieval p50 {_ms(s['retrieval_p50_ms'])}, "
        f"p95 {_ms(s['retrieval_p95_ms'])}; {s['tokens_per_s_mean'] or '-'} tokens/s"
    ]
    for q in t["questions"]:
        out.append(
            f"  {_iso(q['at'])} {q['channel']:<4} {q['mode']:<10} {q['outcome']:<9} "
            f"retrieval {_ms(q['retrieval_ms'])} gen {_ms(q['generation_ms'])} "
            f"{q['tokens']} tok {_rate(q['tokens_per_s'])}"
        )
    for j in t.get("finetune", []):
        out.append(_finetune_line(j))
    out.append(f"ingestion  {len(t['ingests'])} recent files")
    for i in t["ingests"]:
        stages = " ".join(
            f"{k[:-2]} {i[k]:.2f}s"
            for k in ("parse_s", "chunk_s", "embed_s", "write_s")
            if i[k] is not None
        )
        code = f" [{i['code']}]" if i["code"] else ""
        out.append(
            f"  {_iso(i['at'])} {i['group_name']:<10} {i['outcome']:<8}{code} "
            f"{i['pages']} pages {i['chunks']} chunks {stages}".rstrip()
        )
    return out


def _finetune_line(j: dict[str, Any]) -> str:
    loss = "-" if j["loss"] is None else f"{j['loss']:.4f}"
    eta = f", ETA {duration(j['eta_s'])}" if j["state"] == "running" and j["eta_s"] else ""
    why = f" [{j['reason_code']}]" if j["reason_code"] else ""
    return (
        f"finetune   {j['id']} {j['state']}{why}: {j['base']} + {j['dataset']} -> {j['name']}, "
        f"step {j['step']}/{j['total_steps']}, loss {loss}, {_rate(j['tokens_per_s']) or '-'}"
        f"{eta}, checkpoint step {j['checkpoint_step'] or '-'}"
    )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms" if v < 10 else f"{v:.0f} ms"


def _rate(v: float | None) -> str:
    return "" if not v else f"{v:.1f} tok/s"


def _dense_memory_line(m: dict[str, Any]) -> str:
    if m.get("state") != "ready":
        return f"dense mem  {m.get('state')}: {m.get('reason', '')}".rstrip(": ")
    return (
        f"dense mem  ready, {m['rows']} chunks in {m['mb']} MB (of {m['max_mb']} MB); "
        f"{m['searches']} searches, {m['fallbacks']} sent to Milvus while it caught up"
    )
