"""The GPU check's markdown report, rendered from the result (the JSON) alone."""

from __future__ import annotations

from typing import Any

from ..report import format_bytes, md_table
from .profile import FAMILIES


def _ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.3g} ms" if ms < 1000 else f"{ms:,.0f} ms"


def _names(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def _find(rows: list[dict[str, Any]], method: str, n: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["method"] == method and r["n"] == n), None)


def _cell(r: dict[str, Any] | None, what: str) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return "skip" if r["status"] == "skipped" else "error"
    if what == "time":
        text = _ms(r["median_s"])
        if "ratio_to_cdist" in r:
            text += f" ({r['ratio_to_cdist']:.3g}x)"
        return text
    if what == "memory":
        return format_bytes(r["memory"]["extra_peak_bytes"])
    return _ms(r["compile_s"]) if r.get("compile_s") is not None else ""


def _grid(rows: list[dict[str, Any]], what: str, names: list[str] | None = None) -> str:
    names = names or _names(rows)
    sizes = sorted({r["n"] for r in rows})
    cells = [[n, *(_cell(_find(rows, name, n), what) for name in names)] for n in sizes]
    return md_table(["N", *names], cells, "r" * (len(names) + 1))


def _audit_table(audit: dict[str, Any]) -> str:
    rows = audit["rows"]
    sizes = audit["sizes"]
    keys = list(dict.fromkeys((r["entry"], r["variant"]) for r in rows))
    cells = []
    for entry, variant in keys:
        mine = [r for r in rows if (r["entry"], r["variant"]) == (entry, variant)]
        by_n = {r["n"]: r for r in mine}
        counts = [
            ""
            if n not in by_n
            else "skip"
            if by_n[n].get("skipped")
            else ("error" if by_n[n]["syncs"] is None else by_n[n]["syncs"])
            for n in sizes
        ]
        ran = [r for r in mine if not r.get("skipped")]
        verdict = "SKIP" if not ran else "PASS" if all(r["passed"] for r in ran) else "FAIL"
        cells.append([entry, variant, *counts, f"<= {mine[0]['budget']}", verdict])
    header = ["entry point", "variant", *(f"N={n}" for n in sizes), "budget", "result"]
    return md_table(header, cells, "ll" + "r" * len(sizes) + "rl")


def _profile_table(profile: dict[str, Any]) -> str:
    cells = []
    for r in profile["rows"]:
        if r["status"] != "ok":
            cells.append([r["method"], "error", *[""] * len(FAMILIES)])
            continue
        fams = r["families"]
        cells.append(
            [
                r["method"],
                f"{r['total_ms']:.3g} ms",
                *(
                    f"{fams[f]['ms']:.3g} ms ({100 * fams[f]['share']:.0f}%)"
                    if fams[f]["count"]
                    else ""
                    for f in FAMILIES
                ),
            ]
        )
    return md_table(["method", "total", *FAMILIES], cells, "l" + "r" * (len(FAMILIES) + 1))


def _audit_skips(audit: dict[str, Any]) -> str | None:
    """Why audit rows were skipped, one line per reason."""
    reasons = list(dict.fromkeys(r["skipped"] for r in audit["rows"] if r.get("skipped")))
    return "\n".join(f"- skipped: {why}" for why in reasons) or None


def _notes(rows: list[dict[str, Any]]) -> str | None:
    notes = [r for r in rows if r["status"] != "ok"]
    if not notes:
        return None
    return "\n".join(
        f"- {r['method']} N={r['n']}: {r['status']}: {r.get('reason') or r.get('error')}"
        for r in notes
    )


def markdown_report(result: dict[str, Any]) -> str:
    """The markdown of a run: machine, sync audit, times, memory, compile times, profiler
    breakdown, and the configurations skipped or failed."""
    cfg, machine = result["config"], result["machine"]
    dry = cfg["dry_run"]
    title = "# GPU check (`python -m benchmarks.gpu`)" + (" — dry run on the CPU" if dry else "")
    where = machine.get("cuda_device") if not dry else machine.get("cpu")
    parts = [
        title,
        f"Device: {where}; torch {machine.get('torch')}; commit {machine.get('git_commit')}; "
        f"{machine.get('timestamp')}. D = {cfg['dim']}, P x K labels with K = "
        f"{cfg['k_per_class']}, float32, margin {cfg['margin']}."
        + (
            " Dry run: CPU stand-ins for the CUDA-only parts; the numbers say nothing about a GPU."
            if dry
            else ""
        ),
    ]
    audit = result.get("sync_audit")
    if audit:
        verdict = "all within budget" if audit["passed"] else "SOME OVER BUDGET"
        parts += [
            f"## Sync audit: host synchronisations per call ({verdict})",
            f"Counted with {audit['how']}. Losses: forward + backward; miners: one call.",
            _audit_table(audit),
        ]
        skips = _audit_skips(audit)
        if skips:
            parts.append(skips)
    profile = result.get("profile")
    if profile:
        parts += [
            f"## Profiler breakdown at N = {profile['n']} (eager, one forward + backward)",
            f"Time of {profile['activity']}, by family.",
            _profile_table(profile),
        ]
    timing = result.get("timing")
    if timing:
        rows = timing["rows"]
        timed = set(_names(rows))
        names = [n for n in result.get("methods", {}) if n in timed] or _names(rows)
        large = cfg.get("large_sizes") or []
        sizes_note = (
            f" At N = {', '.join(f'{n:,}' for n in large)}: cdist, the eager losses and the "
            "triton rows only (an in-memory row is skipped where its predicted memory exceeds "
            "the device's)."
            if large
            else ""
        )
        parts += [
            "## Forward + backward time (median after warm-up; ratio to torch.cdist)",
            f"Timer: {timing['timer']}.{sizes_note}",
            _grid(rows, "time", names),
            "## Peak memory (extra over the inputs)",
            f"{timing['memory']}.",
            _grid(rows, "memory", names),
        ]
        compiled = [n for n in names if n.endswith("[compiled]")]
        if compiled:
            parts += [
                "## Compile time (first call at a size minus the median)",
                f"Backend {timing['compile_backend']!r}; its one-off start-up "
                f"({timing['compile_warmup_s'] or 0:.1f} s) is not included.",
                _grid(rows, "compile", compiled),
            ]
        notes = _notes(rows)
        if notes:
            parts += ["## Skipped and failed configurations", notes]
    missing = cfg.get("peers_missing")
    if missing:
        parts.append("Peers not installed (not measured): " + ", ".join(missing) + ".")
    return "\n\n".join(parts) + "\n"
