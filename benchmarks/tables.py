"""Plain formatting of benchmark numbers and tables (no torch: benchmarks/report.py uses it too)."""

from __future__ import annotations


def fmt_t(s: float | None) -> str:
    """Seconds as ``12.3 us`` / ``4.56 ms`` / ``7.89 s`` (``-`` for None)."""
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_ratio(r: float) -> str:
    """A ratio as ``123x`` (>= 100) or ``4.56x``."""
    return f"{r:.0f}x" if r >= 100 else f"{r:.2f}x"


def fmt_ratio_ci(b: dict) -> str:
    """A ratio with its 95% interval when the row has one: ``1.72x [1.65, 1.80]``."""
    if b.get("ratio_lo") is None or b.get("ratio_hi") is None:
        return fmt_ratio(b["ratio"])
    return f"{fmt_ratio(b['ratio'])} [{b['ratio_lo']:.3g}, {b['ratio_hi']:.3g}]"


def text_table(head: list[str], body: list[list[str]]) -> str:
    """Columns aligned with spaces, a dashed rule under the head."""
    w = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(n) for c, n in zip(cells, w, strict=False)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * n for n in w])] + [line(b) for b in body])


def md_table(head: list[str], body: list[list[str]]) -> str:
    """A GitHub markdown table."""
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in b) + " |" for b in body]
    return "\n".join(out)


def _met(v: bool | None) -> str:
    return "-" if v is None else ("met" if v else "MISSED")


def ratio_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """run_ops rows -> one line per (case, baseline): times, ratio = baseline / fast with its 95% interval, target,
    met; the row's strongest (fastest) baseline, its headline, is marked with ``*``."""
    head = ["op", "variant", "fast", "baseline", "baseline time", "ratio [95% CI]", "target", "met"]
    body = []
    for r in rows:
        for b in r["baselines"]:
            tgt = "-" if b["target"] is None else f">= {b['target']:g}x"
            body.append(
                [
                    r["op"],
                    r["variant"],
                    fmt_t(r["fast_s"]),
                    b["name"] + (" *" if r.get("strongest") == b["name"] else ""),
                    fmt_t(b["median_s"]),
                    fmt_ratio_ci(b),
                    tgt,
                    _met(b["met"]),
                ]
            )
    return head, body


def floor_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """run_ops rows (after add_floor) -> kernel time, bytes, GB/s, share of peak, x floor, floor target."""
    nominal = any(r.get("x_floor_nominal") for r in rows)
    head = ["op", "variant", "kernel", "bytes", "counted as", "GB/s", "% peak", "x floor"]
    if nominal:
        gbps = next(r["nominal_gbps"] for r in rows if r.get("x_floor_nominal"))
        head.append(f"x floor at {gbps / 1000:g} TB/s")
    head += ["floor target", "met"]
    body = []
    for r in rows:
        pct = 100.0 / r["x_floor"] if r["x_floor"] else 0.0
        tgt = "-" if r["floor_max"] is None else f"<= {r['floor_max']:g}x"
        body.append(
            [
                r["op"],
                r["variant"],
                fmt_t(r["kernel_s"] if r["kernel_s"] is not None else r["fast_s"]),
                f"{r['bytes'] / 1e6:.3g} MB",
                r["bytes_note"],
                f"{r['gbps']:.0f}" if r["gbps"] >= 10 else f"{r['gbps']:.2f}",
                f"{pct:.0f}%",
                f"{r['x_floor']:.2f}x",
                *([f"{r['x_floor_nominal']:.2f}x" if r.get("x_floor_nominal") else "-"] if nominal else []),
                tgt,
                _met(r["floor_met"]),
            ]
        )
    return head, body


def _gib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _x_ci(r: dict, key: str, prefix: str) -> str:
    """``r[key]`` as ``2.10x [2.02, 2.18]`` from ``r[prefix + "_lo"]``/``_hi`` when present."""
    v, lo, hi = r.get(key), r.get(prefix + "_lo"), r.get(prefix + "_hi")
    if v is None:
        return "-"
    return _x(v) if lo is None or hi is None else f"{_x(v)} [{lo:.3g}, {hi:.3g}]"


def train_table(p: dict) -> tuple[list[str], list[list[str]]]:
    """One run_train problem -> a line per configuration: step time, images/s, ratios, CPU time, memory, targets."""
    rows = p["rows"]
    with_cpu = any(r.get("cpu_median_s") for r in rows)
    with_mem = any(r["peak_bytes"] for r in rows)
    head = ["config", "step", "images/s", "vs (a)", "vs (b)"]
    head += ["CPU time"] if with_cpu else []
    head += ["peak memory", "mem vs (a)"] if with_mem else []
    head.append("targets")
    body = []
    for r in rows:
        tg = []
        for name, t in r["targets"].items():
            sign = "<=" if name.startswith("mem") else ">="
            state = "-" if t["met"] is None else ("met" if t["met"] else "MISSED")
            tg.append(f"{name} {sign} {t['target']:g}x: {state}")
        line = [f"({r['key']}) {r['config']}", fmt_t(r["median_s"]), f"{r['images_per_s']:.3g}"]
        line += [_x(r["vs_a"]), _x(r["vs_b"])]
        if with_cpu:
            line.append(fmt_t(r.get("cpu_median_s")))
        if with_mem:
            line += [_gib(r["peak_bytes"]), _x(r["mem_vs_a"])]
        line.append("; ".join(tg) if tg else "-")
        body.append(line)
    return head, body


def nets_table(n: dict) -> tuple[list[str], list[list[str]]]:
    """run_train G/D rows -> pass, precision, reference and fast times, ratio."""
    head = ["pass", "precision", "reference ops", "fast ops", "ratio"]
    body = [[r["pass"], r["precision"], fmt_t(r["reference_s"]), fmt_t(r["fast_s"]), _x(r["ratio"])] for r in n["rows"]]
    return head, body


def profile_tables(pr: dict) -> tuple[tuple[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]:
    """run_train profile -> (time per group, top ops)."""
    g = (
        ["group", "per step", "share"],
        [[r["group"], fmt_t(r["self_s_per_step"]), f"{r['pct']:.1f}%"] for r in pr["groups"]],
    )
    t = (
        ["op", "group", "per step", "share"],
        [[r["op"][:70], r["group"], fmt_t(r["self_s_per_step"]), f"{r['pct']:.1f}%"] for r in pr["top_ops"]],
    )
    return g, t


def infer_table(p: dict) -> tuple[list[str], list[list[str]]]:
    """One run_infer problem -> a line per configuration: latency, images/s, ratio vs (a), warm-up, difference."""
    rows = p["rows"]
    with_cpu = any(r.get("cpu_median_s") for r in rows)
    head = ["config", "latency", "min", "images/s", "vs (a) [95% CI]", "vs stock twin [95% CI]"]
    head += ["CPU time"] if with_cpu else []
    head += ["set-up", "first call", "max abs diff vs (a)", "note"]
    body = []
    for r in rows:
        line = [f"({r['key']}) {r['config']}"]
        if r["status"] != "ok":
            reason = " ".join(str(r.get("reason", "")).replace("|", "/").split())
            note = f"{r['status']}: {reason if len(reason) <= 110 else reason[:107] + '...'}"
            body.append(line + ["-"] * (len(head) - 2) + [note])
            continue
        line += [fmt_t(r["median_s"]), fmt_t(r["min_s"]), f"{r['images_per_s']:.3g}", _x_ci(r, "vs_a", "vs_a")]
        line.append(
            f"{_x_ci(r, 'vs_stock_ratio', 'vs_stock')} vs ({r['vs_stock']})" if r.get("vs_stock_ratio") else "-"
        )
        if with_cpu:
            line.append(fmt_t(r.get("cpu_median_s")))
        diff = r.get("max_abs_diff_vs_a")
        line += [fmt_t(r.get("setup_s")), fmt_t(r.get("first_call_s")), "-" if diff is None else f"{diff:.2g}"]
        t = r.get("target")
        note = ""
        if t:
            state = "-" if t["met"] is None else ("met" if t["met"] else "MISSED")
            note = f"target >= {t['vs_a']:g}x: {state}"
        if r.get("provider"):
            note = "; ".join(x for x in (note, r["provider"]) if x)
        body.append(line + [note or "-"])
    return head, body
