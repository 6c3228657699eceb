"""The families of a run as the report sees them: read from results.json ("families", written by `gvd run` from the
family table), so a report is rebuilt without any family's code, a user's included."""

from bench.report.figures import family_colour


def families_of(results: dict) -> dict:
    """name -> description ({"label", "role", "knob", ...}) of every family in the results, in the run's order;
    a name found only in the entries gets a plain description (role "model")."""
    out = dict(results.get("families") or {})
    for r in results.get("runs", []):
        out.setdefault(r["model"], {"label": r["model"], "role": r.get("role", "model"), "knob": None})
    return out


def models(families: dict) -> list[str]:
    """The families that compete (role "model"), in order."""
    return [f for f, d in families.items() if d.get("role", "model") == "model"]


def calibrations(families: dict) -> list[str]:
    """The reference rows (role "calibration"), in order."""
    return [f for f, d in families.items() if d.get("role") == "calibration"]


def label(families: dict, name: str) -> str:
    return (families.get(name) or {}).get("label") or name


def knob_symbol(families: dict, name: str) -> str | None:
    knob = (families.get(name) or {}).get("knob")
    return knob.get("symbol") if knob else None


def colour(families: dict, name: str) -> str:
    """The family's colour in every figure (bench/report/figures.py family_colour)."""
    return family_colour(name, list(families).index(name) if name in families else 0,
                         (families.get(name) or {}).get("role", "model"))
