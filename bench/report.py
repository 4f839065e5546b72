"""bench/RESULTS.md and the plots (bench/*.png), from the results dict of `python -m bench`.

Everything here is rendered from the measurements; the only hand-written part is
bench/ANALYSIS.md (what the figures mean, what to change), included verbatim at the end.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STEP_ORDER = ("preflight", "flag", "propagation", "schema", "verify", "notify")
STEP_COLOURS = {
    "preflight": "#c6dbef",
    "flag": "#fdd0a2",
    "propagation": "#fdae6b",
    "schema": "#fb6a4a",
    "verify": "#a1d99b",
    "notify": "#dadaeb",
}


# -- formatting ------------------------------------------------------------------------------------
def s(stat: dict | None, unit: str = " s", digits: int = 2) -> str:
    """`median (min-max)` of a summary."""
    if not stat or stat.get("median") is None:
        return "-"
    if stat.get("n", 0) <= 1:
        return f"{stat['median']:.{digits}f}{unit}"
    return f"{stat['median']:.{digits}f}{unit} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def num(value, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


# -- the report --------------------------------------------------------------------------------------
def write_report(results: dict, folder: Path) -> None:
    plots = []
    if results.get("p2"):
        plots.append(plot_fanout(results["p2"], folder / "fanout.png"))
    if results.get("p4"):
        plots.append(plot_timeline(results["p4"], folder / "timeline.png"))
    if results.get("p1"):
        plots.append(plot_steps(results["p1"], folder / "p1_steps.png"))
    lines = render(results)
    analysis = folder / "ANALYSIS.md"
    if analysis.exists():
        lines += ["", analysis.read_text().rstrip(), ""]
    (folder / "RESULTS.md").write_text("\n".join(lines).rstrip() + "\n")


PARTS_IN_ORDER = ("p1", "p2", "profile", "overhead", "p4", "p3", "stress")


def render(results: dict) -> list[str]:
    m, o = results["machine"], results.get("options", {})
    lines = [
        "# Benchmarks of the emergency rollback",
        "",
        "Written by `make bench` (`.venv/bin/python -m bench`, see `bench/__main__.py` for the options) on the",
        "run below; nothing here is typed by hand except the analysis at the end (bench/ANALYSIS.md).",
        "Every figure is the median of the runs, with (min-max). Times are wall-clock seconds from launch to",
        "exit unless marked CPU (user + system of the whole process tree: the steadier figure on a shared machine).",
        "",
        "## Machine and run",
        "",
    ]
    lines += table(
        ["", ""],
        [
            ["CPU", f"{m['nproc']} x {m['cpu_model']}"],
            ["memory", f"{m.get('memory_gb')} GB"],
            [
                "load average (1, 5, 15 min)",
                f"{m['load_average_start']} at start, {m.get('load_average_end', '?')} at the end (2 cores, shared)",
            ],
            ["software", f"Python {m['python']}, ansible-core {m['ansible_core']}, kernel {m['kernel']}"],
            ["project measured", m.get("project", "this repository")],
            ["commit, date", f"{m['commit']}, {m['started_at']}"],
            [
                "uncommitted changes measured",
                ", ".join(m.get("uncommitted_changes") or []) or "none (the commit above is what was measured)",
            ],
            [
                "options",
                f"P1 {o.get('runs')} runs each; P2 {o.get('fanout')} databases x {o.get('fanout_runs')} runs each; "
                f"P3 refresh {o.get('refresh')} s x {o.get('p3_runs')} toggles; profile {o.get('profile_runs')} runs; "
                f"P4 {o.get('rate')} req/s",
            ],
            ["parts measured", ", ".join(k for k in PARTS_IN_ORDER if k in results)],
        ],
    )
    if results.get("error"):
        lines += [f"**The run stopped early**: {results['error']}. The parts above it are complete.", ""]
    for part, error in (results.get("errors") or {}).items():
        lines += [f"**{part} failed**: {error} (its figures are missing below).", ""]
    lines += summary_table(results)
    if results.get("p1"):
        lines += p1_section(results["p1"])
    if results.get("p2"):
        lines += p2_section(results["p2"])
    if results.get("p3"):
        lines += p3_section(results["p3"])
    if results.get("p4"):
        lines += p4_section(results["p4"])
    if results.get("profile"):
        lines += profile_section(results["profile"], results.get("overhead"), results.get("p1"))
    if results.get("stress"):
        lines += stress_section(results["stress"])
    return lines


def stress_section(stress: dict) -> list[str]:
    """The many-database revert run again and again: hangs counted, not timed."""
    verdict = "no run hung" if not stress["hung"] else f"**{stress['hung']} run(s) hung**"
    lines = [
        "## Stress: the many-database revert, again and again",
        "",
        f"{stress['runs']} rollbacks in a row of {stress['databases']} databases through `ansible-playbook`"
        " (each after a redeploy), every one under the playbook watchdog that kills a run outliving its timeout:"
        f" {verdict}; {stress['failed']} failed; {stress['ok']} succeeded.",
        "",
    ]
    lines += table(
        ["", "median (min-max)"],
        [["rollback, launch to exit", s(stress.get("wall"))], ["schema step", s(stress.get("schema"))]],
    )
    for outcome in stress["raw"]:
        if outcome["outcome"] != "ok":
            lines.append(f"- run {outcome['run']}: {outcome['outcome']}: {outcome.get('error', '')}")
    return [*lines, ""]


def summary_table(results: dict) -> list[str]:
    rows = []
    p1 = results.get("p1")
    if p1:
        pb, fl = p1["playbook"], p1["floor"]
        excl, off = pb["excl_wait"]["median"], (pb.get("flag_off") or {}).get("median")
        rows += [
            ["P0 launch → flag confirmed off (`p1.playbook.flag_off`)", s(pb.get("flag_off")), s(fl.get("flag_off")),
             num(p1["ratio"].get("flag_off"), "x"), "≤ 1.0 s", met(off is not None and off <= 1.0)],
            ["P1 rollback.yml, 1 database, launch to exit", s(pb["wall"]), s(fl["wall"]), num(p1["ratio"]["wall"], "x"),
             "≤ 1.5x the floor", met((p1["ratio"]["wall"] or 99) <= 1.5)],
            ["P1, excluding the propagation wait", s(pb["excl_wait"]), s(fl["excl_wait"]),
             num(p1["ratio"]["excl_wait"], "x"), "< 3 s", met(excl is not None and excl < 3)],
            ["P1 propagation wait (separately)", s(pb["propagation_wait"]), s(fl["propagation_wait"]), "-", "-", "-"],
            ["P1 CPU time", s(pb["cpu"]), s(fl["cpu"]), num(p1["ratio"]["cpu"], "x"), "-", "-"],
        ]  # fmt: skip
    p2 = results.get("p2")
    if p2:
        fit, counts = p2["fit"], ", ".join(str(p["databases"]) for p in p2["points"])
        for point in p2["points"]:
            if point["databases"] not in (100, p2["points"][-1]["databases"]):
                continue
            target = point["databases"] == 100
            rows.append(
                [f"P2 {point['databases']} databases, launch to exit", s(point["playbook"]["wall"]),
                 s(point["floor"]["wall"]), num(point["ratio"]["wall"], "x"), "≤ 1.5x the floor" if target else "-",
                 met((point["ratio"]["wall"] or 99) <= 1.5) if target else "-"]
            )  # fmt: skip
        rows.append(
            [f"P2 time per extra database (least-squares slope of the medians, {counts} databases)",
             num(fit["playbook"]["slope"], " s", 3),
             num(fit["floor"]["slope"], " s", 3), num(ratio_(fit["playbook"]["slope"], fit["floor"]["slope"]), "x"),
             "≤ 0.05 s", met(fit["playbook"]["slope"] <= 0.05)]
        )  # fmt: skip
    parts = [results[k] for k in ("p1",) if results.get(k)] + (results.get("p2") or {}).get("points", [])
    runs = sum(p.get("runs", 0) for p in parts)
    hung = sum(len(p.get("hung") or []) for p in parts)
    if parts:
        rows.append(
            ["P1/P2 playbook runs that did not end (watchdog: 150 s + 0.5 s a database)",
             f"{hung} of {runs}", "0 of " + str(runs),
             "-", "0", met(hung == 0)]
        )  # fmt: skip
    stress = results.get("stress")
    if stress:
        rows.append(
            [f"Stress: {stress['databases']}-database rollbacks through ansible-playbook, runs that hung",
             f"{stress['hung']} of {stress['runs']} ({stress['failed']} failed, {stress['ok']} succeeded)", "-", "-",
             "0 hangs in ≥ 20 runs", met(stress["hung"] == 0 and stress["runs"] >= 20)]
        )  # fmt: skip
    p3 = results.get("p3")
    if p3:
        for point in p3["points"]:
            rows.append(
                [f"P3 time to legacy, SDK refresh {point['refresh']:g} s (flag write → last instance)",
                 s(point["last"]) + f"; {point['within_target']}/{point['runs']} within target", "-", "-",
                 f"≤ {point['target']:g} s", met(point["last"]["max"] <= point["target"])]
            )  # fmt: skip
    p4 = results.get("p4")
    if p4:
        during = p4["during_rollback"]
        rows += [
            [f"P4 failed requests during the rollback ({p4['rate']:g} req/s)",
             f"{during['failed']} of {during['requests']}", "-", "-", "0", met(during["failed"] == 0)],
            ["P4 p99 latency increase during the schema step", num(p4["p99_increase_ms"], " ms", 0), "-", "-",
             f"≤ {p4['target_increase_ms']:g} ms (lock_timeout + 100 ms)",
             met(p4["p99_increase_ms"] is not None and p4["p99_increase_ms"] <= p4["target_increase_ms"])],
        ]  # fmt: skip
    if not rows:
        return []
    return ["## Summary", "", *table(["figure", "playbook", "floor", "ratio", "target", "met"], rows)]


def ratio_(a, b):
    return a / b if a is not None and b else None


def p1_section(p1: dict) -> list[str]:
    pb, fl = p1["playbook"], p1["floor"]
    lines = [
        "## P1: one environment, one database, end to end",
        "",
        f"{p1['runs']} runs of `ansible-playbook rollback.yml -e env=local` and {p1['runs']} of the floor",
        "(`python -m bench.floor`: the same module_utils doing the same work in one process, see bench/floor.py),",
        "alternating, each rolling back a fresh deployment. *Propagation wait* is the barrier's own elapsed time",
        "(the audit record's `propagation_seconds`; the floor measures it the same way); *excluding the wait* is",
        "launch-to-exit minus that. The propagation **step** of the playbook (the barrier task plus its audit task)",
        f"took {s(pb['propagation_step'])}; launch to exit minus the whole step is {s(pb['excl_step'])}.",
        f"Launch to the first step: playbook {s(pb['launch_to_first_step'])}.",
        "",
    ]
    rows = [
        ["launch to flag confirmed off", s(pb.get("flag_off")), s(fl.get("flag_off")),
         num(p1["ratio"].get("flag_off"), "x")],
        ["launch to exit", s(pb["wall"]), s(fl["wall"]), num(p1["ratio"]["wall"], "x")],
        ["excluding the propagation wait", s(pb["excl_wait"]), s(fl["excl_wait"]), num(p1["ratio"]["excl_wait"], "x")],
        ["propagation wait", s(pb["propagation_wait"]), s(fl["propagation_wait"]), "-"],
        ["CPU (user + system)", s(pb["cpu"]), s(fl["cpu"]), num(p1["ratio"]["cpu"], "x")],
        ["floor in-process (after its imports)", "-", s(fl["in_process"]), "-"],
        ["floor: the plan, beside the barrier (start event, audit check, states, plan)", "-", s(fl.get("plan")), "-"],
    ]  # fmt: skip
    for name in STEP_ORDER:
        a, b = pb["steps"].get(name), fl["steps"].get(name)
        rows.append(
            [f"step {name}", s(a), s(b), num(ratio_(a and a["median"], b and b["median"]), "x")]
        )  # fmt: skip
    lines += table(["", "playbook", "floor", "ratio"], rows)
    lines += hung_note(p1)
    lines += ["![P1 per step](p1_steps.png)", ""]
    return lines


def hung_note(part: dict) -> list[str]:
    hung = part.get("hung") or []
    if not hung:
        return []
    return [
        f"**{len(hung)} playbook run(s) with {part['databases']} database(s) did not end** and were killed after the"
        " timeout (not counted in the figures above): " + "; ".join(hung),
        "",
    ]


def p2_section(p2: dict) -> list[str]:
    lines = [
        "## P2: fan-out over many databases",
        "",
        "One environment with N databases: the application's plus N - 1 tenant databases (`tenant_001`..), added",
        "to the group `local` by an extra inventory, so one `schema_migration` call reverts them all",
        "(`parallel` 2, the role's default). The floor does the same work with the same module_utils and the",
        "roles' defaults.",
        "",
    ]
    rows = []
    for p in p2["points"]:
        pb, fl = p["playbook"], p["floor"]
        rows.append(
            [str(p["databases"]), s(pb["wall"]), s(fl["wall"]), num(p["ratio"]["wall"], "x"),
             s(pb["steps"]["preflight"]), s(pb["steps"]["schema"]), s(pb["steps"]["verify"]),
             s(fl["steps"]["preflight"]), s(fl["steps"]["schema"]), s(fl["steps"]["verify"]), s(pb["cpu"])]
        )  # fmt: skip
    lines += table(
        ["databases", "playbook", "floor", "ratio", "pb preflight", "pb schema", "pb verify", "floor preflight",
         "floor schema", "floor verify", "pb CPU"],
        rows,
    )  # fmt: skip
    for p in p2["points"]:
        lines += hung_note(p)
    pb_fit, fl_fit = p2["fit"]["playbook"], p2["fit"]["floor"]
    lines += [
        f"Time per extra database (least-squares slope of the medians): playbook {num(pb_fit['slope'], ' s', 3)}"
        f" (intercept {num(pb_fit['intercept'], ' s')}), floor {num(fl_fit['slope'], ' s', 3)}"
        f" (intercept {num(fl_fit['intercept'], ' s')}). From the first to the last count:"
        f" playbook {num(pb_fit['endpoints_slope'], ' s', 3)}, floor {num(fl_fit['endpoints_slope'], ' s', 3)}.",
        "",
        "![wall time vs number of databases](fanout.png)",
        "",
    ]
    return lines


def p3_section(p3: dict) -> list[str]:
    lines = [
        "## P3: time to legacy",
        "",
        "The flag written off through Unleash's admin API (as the rehearsal's `set_flag`), after a random pause",
        "(0 to one refresh interval) so that the write meets the timers at every phase; both instances' `/status`",
        f"polled every {p3['poll_seconds'] * 1000:.0f} ms until each reports `legacy`. Measured from just before",
        "the write to the last instance on legacy. The apps were restarted with each refresh interval.",
        "",
    ]
    rows = [
        [f"{p['refresh']:g} s", s(p["last"]), s(p["first"]), s(p["write"], digits=3), f"≤ {p['target']:g} s",
         f"{p['within_target']}/{p['runs']}", ", ".join(f"{x:.2f}" for x in p["samples"])]
        for p in p3["points"]
    ]  # fmt: skip
    lines += table(
        ["SDK refresh", "last instance on legacy", "first instance", "the write itself", "target", "within", "samples"],
        rows,
    )
    return lines


def p4_section(p4: dict) -> list[str]:
    rb = p4["rollback"]
    lines = [
        "## P4: cost to live traffic",
        "",
        f"`rehearsal load` at {p4['rate']:g} req/s of `POST /transform` (open loop, both instances) from 15 s before",
        "the rollback to 15 s after it; requests are assigned to a phase by the time they were sent; phases come from",
        "the audit record's step timestamps. The lock window is when the rollback's session held or waited for an",
        "ACCESS EXCLUSIVE table lock (pg_locks sampled every 10 ms).",
        f"Rollback: {rb['wall']:.2f} s launch to exit, propagation wait {num(rb['propagation_wait'], ' s')},"
        f" schema revert in the database {', '.join(num(x, ' s', 3) for x in rb['schema_db_seconds'])}.",
        "",
    ]
    rows = []
    for name, phase in p4["phases"].items():
        rows.append(
            [name, num(phase["end"] - phase["start"], " s", 1), str(phase["requests"]), str(phase["failed"]),
             num(phase["p50_ms"], " ms", 1), num(phase["p99_ms"], " ms", 1), num(phase["max_ms"], " ms", 1),
             f"{phase['by_path']['new']} / {phase['by_path']['legacy']}"]
        )  # fmt: skip
    lock = p4.get("lock_window")
    if lock:
        rows.append(
            [f"lock window (max {lock['max_queued_sessions']} app sessions queued)", num(lock["lock_seconds"], " s", 3),
             str(lock["requests"]), str(lock["failed"]), num(lock["p50_ms"], " ms", 1), num(lock["p99_ms"], " ms", 1),
             num(lock["max_ms"], " ms", 1), f"{lock['by_path']['new']} / {lock['by_path']['legacy']}"]
        )  # fmt: skip
    during = p4["during_rollback"]
    rows.append(
        ["whole rollback (launch to exit)", num(during["end"] - during["start"], " s", 1), str(during["requests"]),
         str(during["failed"]), num(during["p50_ms"], " ms", 1), num(during["p99_ms"], " ms", 1),
         num(during["max_ms"], " ms", 1), f"{during['by_path']['new']} / {during['by_path']['legacy']}"]
    )  # fmt: skip
    lines += table(["phase", "length", "requests", "failed", "p50", "p99", "max", "path new / legacy"], rows)
    lines += [
        f"p99 increase, schema step vs before: {num(p4['p99_increase_ms'], ' ms', 1)} (target ≤ "
        f"{p4['target_increase_ms']:g} ms). Failed requests in the whole series: {p4['failed_total']} of "
        f"{p4['requests_total']}; requests started more than 50 ms late by the generator: {p4['late_over_50ms']}.",
        "",
        "![one rollback under load](timeline.png)",
        "",
    ]
    return lines


# Modules: ours (their action plugin, if any, runs them in Ansible's worker) and the builtin ones we call.
MODULES = {"feature_flag", "schema_state", "schema_migration", "flag_propagation", "audit_verify", "uri", "mail"}
CONTROLLER = {"validate_argument_spec", "set_stats"}


def kinds(profile: dict) -> dict[str, list[dict]]:
    """The profiled tasks by what they cost: a module process, a module in the worker, controller work."""
    in_worker = set(profile.get("in_process_actions", []))
    tasks = profile["tasks"]
    return {
        "module tasks, a Python process each (AnsiballZ)": [
            t for t in tasks if t["action"] in MODULES and t["action"] not in in_worker
        ],
        "module tasks run in Ansible's worker (action plugins)": [t for t in tasks if t["action"] in in_worker],
        "argument-spec validation": [t for t in tasks if t["action"] == "validate_argument_spec"],
        "set_stats (audit data)": [t for t in tasks if t["action"] == "set_stats"],
        "controller-only tasks (assert, set_fact, debug, include, meta, fail)": [
            t for t in tasks if t["action"] not in MODULES | CONTROLLER | in_worker
        ],
    }


def profile_section(profile: dict, overhead: dict | None, p1: dict | None) -> list[str]:
    lines = [
        "## Profile: where the playbook's time goes",
        "",
        f"{profile['runs']} rollbacks with `ansible.posix.profile_tasks` enabled (profiling runs only; per task the",
        f"median). Launch to exit {s(profile['wall'])}; the tasks account for {profile['total_task_seconds']:.2f} s;",
        f"launch to the first step (Python, Ansible, inventory, playbook parsing, the first play):"
        f" {s(profile['launch_to_first_step'])}; last step to exit: {s(profile['last_step_to_exit'])}.",
        "",
        "The 10 slowest tasks:",
        "",
    ]
    lines += table(
        ["task", "module", "seconds"],
        [[t["task"], t["action"], f"{t['seconds']:.2f}"] for t in profile["slowest"]],
    )
    lines += ["By kind of task:", ""]
    lines += table(
        ["kind", "tasks", "seconds"],
        [[kind, str(len(items)), f"{sum(t['seconds'] for t in items):.2f}"] for kind, items in kinds(profile).items()],
    )
    if overhead:
        lines += [
            "Ansible's own cost per task on this machine (a playbook of 10 `ping` and 10 `debug` tasks on localhost,",
            "without and with `ANSIBLE_PIPELINING`, alternating 3 times; medians of the tasks and of the runs;",
            "`ping` is the cheapest module there is, so its time is the packaging and interpreter start",
            "that every module task pays):",
            "",
        ]
        lines += table(
            ["", "module task (ping)", "controller task (debug)", "playbook wall", "CPU"],
            [
                [key.replace("_", " "), s(v["module_task"]), s(v["controller_task"]), f"{v['wall']:.2f} s",
                 f"{v['cpu']:.2f} s"]
                for key, v in overhead.items()
            ],
        )  # fmt: skip
    lines += ["All tasks in execution order:", ""]
    lines += table(
        ["task", "module", "seconds"], [[t["task"], t["action"], f"{t['seconds']:.2f}"] for t in profile["tasks"]]
    )
    return lines


# -- plots -----------------------------------------------------------------------------------------
def plot_fanout(p2: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [p["databases"] for p in p2["points"]]
    for kind, colour in (("playbook", "#d62728"), ("floor", "#1f77b4")):
        med = [p[kind]["wall"]["median"] for p in p2["points"]]
        low = [m - p[kind]["wall"]["min"] for m, p in zip(med, p2["points"], strict=True)]
        high = [p[kind]["wall"]["max"] - m for m, p in zip(med, p2["points"], strict=True)]
        label = "rollback.yml" if kind == "playbook" else "floor (one Python process)"
        ax.errorbar(xs, med, yerr=[low, high], marker="o", capsize=4, color=colour, label=label)
        fit = p2["fit"][kind]
        ax.plot(
            [0, max(xs)],
            [fit["intercept"], fit["intercept"] + fit["slope"] * max(xs)],
            linestyle=":",
            color=colour,
            label=f"fit: {fit['slope']:.3f} s per database",
        )
    at_100 = next((p for p in p2["points"] if p["databases"] == 100), None)
    if at_100 and at_100["floor"]["wall"]["median"]:
        limit = 1.5 * at_100["floor"]["wall"]["median"]
        ax.scatter(
            [100], [limit], marker="*", s=160, color="green", zorder=5, label="target: 100 databases ≤ 1.5x the floor"
        )
    ax.set_xlabel("databases in the environment")
    ax.set_ylabel("wall time, launch to exit (s)")
    ax.set_title("P2: rollback wall time vs number of databases (median, min-max)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_timeline(p4: dict, path: Path) -> Path:
    tl = p4["timeline"]
    rb = p4["rollback"]
    origin = rb["launched"]
    fig, (ax_rate, ax_lat) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=[1, 1.2])
    for ax in (ax_rate, ax_lat):
        for name, step in rb["steps"].items():
            ax.axvspan(step["start"] - origin, step["end"] - origin, color=STEP_COLOURS.get(name, "#eeeeee"), alpha=0.6)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.axvline(rb["exited"] - origin, color="black", linewidth=0.8)
        ax.grid(alpha=0.3)
    for index, (name, step) in enumerate(rb["steps"].items()):
        ax_rate.text(
            step["start"] - origin, 1.02 + 0.09 * (index % 2), name, transform=ax_rate.get_xaxis_transform(),
            ha="left", fontsize=7,
        )  # fmt: skip
    ax_rate.plot(tl["t"], tl["rate"], color="#1f77b4", linewidth=1, label="requests/s sent")
    ax_rate.bar(tl["t"], [f / tl["width"] for f in tl["failed"]], width=tl["width"], color="red", label="failed/s")
    share = [None if x is None else x * max(tl["rate"] or [1]) for x in tl["legacy_share"]]
    ax_rate.plot(tl["t"], share, color="#2ca02c", linewidth=1, linestyle="--", label="share on legacy path (scaled)")
    ax_rate.set_ylabel("requests/s")
    ax_rate.legend(fontsize=7, loc="lower left")
    p99 = [x if x is not None else float("nan") for x in tl["p99_ms"]]
    ax_lat.plot(tl["t"], p99, color="#9467bd", linewidth=1, label=f"p99 latency per {tl['width']:g} s (ms)")
    locked = [t for t, flag in zip(tl["t"], tl["locked"], strict=True) if flag]
    if locked:
        ax_lat.axvspan(min(locked), max(locked) + tl["width"], color="black", alpha=0.25, label="ACCESS EXCLUSIVE lock")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("p99 latency (ms, log)")
    ax_lat.set_xlabel("seconds since the rollback was launched (bands: the audit record's steps)")
    queued_ax = ax_lat.twinx()
    queued_ax.step(tl["t"], tl["queued"], where="post", color="#8c564b", linewidth=0.8, label="app sessions waiting")
    queued_ax.set_ylabel("sessions waiting for a lock")
    handles = ax_lat.get_legend_handles_labels()
    more = queued_ax.get_legend_handles_labels()
    ax_lat.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper left")
    fig.suptitle(f"P4: one rollback under {p4['rate']:g} req/s (failed during the rollback: "
                 f"{p4['during_rollback']['failed']})")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_steps(p1: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 2.8))
    for row, kind in enumerate(("floor", "playbook")):
        left = 0.0
        for name in STEP_ORDER:
            value = (p1[kind]["steps"].get(name) or {}).get("median") or 0.0
            ax.barh(row, value, left=left, color=STEP_COLOURS[name], edgecolor="white", label=name if row else None)
            if value > 0.6:
                ax.text(left + value / 2, row, f"{value:.1f}", ha="center", va="center", fontsize=7)
            left += value
        rest = p1[kind]["wall"]["median"] - left
        if rest > 0:
            ax.barh(row, rest, left=left, color="#bbbbbb", label="start-up and exit" if row else None)
    ax.set_yticks([0, 1], ["floor", "rollback.yml"])
    ax.set_xlabel("seconds (median per step; grey: launch to first step and last step to exit)")
    ax.set_title("P1: where the time goes, one database")
    ax.legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
