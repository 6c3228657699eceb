"""The protocol record: everything a feature-based number (FID, KID, PRDC) depends on besides the two image sets.

FID from different feature networks, resizing, sample counts, reference sets or library versions cannot be put side
by side (Parmar et al. 2022 on resizing; Chong & Forsyth 2020 on the sample count). Each metric family in a run
carries one of these records; `comparable(a, b)` names the fields on which two of them differ, so a comparison of
two runs can flag numbers that are not comparable instead of printing a misleading delta.
"""

import json

import torch

from bench.core.files import content_hash, module_hash, versions
from bench.evaluate.metrics import kid_subset_size
from bench.train.loops import OPTIMISER

PROTOCOL_VERSION = 1  # bump when the record's fields change


def protocol_record(*, backbone: str, weights_sha256: str, resize: str, resize_size: int | None, num_real: int,
                    num_fake: int, reference_split: str, reference_hash: str, num_seeds: int,
                    kid_subset_size: int | None = None, kid_subset_note: str | None = None,
                    arithmetic: str = "float32") -> dict:
    """How a set of feature-based metrics was computed.

    backbone: the feature network ("judge", or an Inception file's name); weights_sha256: its weights' hash;
    resize / resize_size: how images reach the network's input (None when fed at their own size); num_real /
    num_fake: the sample counts FID is biased by; reference_split / reference_hash: which real images, and their
    content hash; num_seeds: training seeds behind the number; kid_subset_size / kid_subset_note: KID's subset
    size as used, and why it is smaller than asked for (bench.evaluate.metrics.kid_subset_size); arithmetic: what
    the families trained and sampled in ("bf16 autocast" or "float32": bench/train/loops.py precision), the same for
    every family, and a difference that moves every number a little; optimiser: torch's implementation of every
    training's Adam (bench/train/loops.py adam: fused), likewise.
    """
    return {"protocol": PROTOCOL_VERSION, "backbone": backbone, "weights_sha256": weights_sha256, "resize": resize,
            "resize_size": resize_size, "num_real": int(num_real), "num_fake": int(num_fake),
            "reference_split": reference_split, "reference_hash": reference_hash, "num_seeds": int(num_seeds),
            "kid_subset_size": kid_subset_size, "kid_subset_note": kid_subset_note, "arithmetic": arithmetic,
            "optimiser": OPTIMISER, "versions": versions()}


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)  # 1 and 1.0, None and null compare alike
    return out


def comparable(rec_a: dict | None, rec_b: dict | None, ignore: tuple[str, ...] = ()) -> list[str]:
    """The fields (dotted, e.g. "versions.torch") on which two protocol records differ; [] means the numbers are
    comparable. A field present in one record only counts as different; a missing record differs in everything
    ("protocol" alone). Fields in `ignore`, or under a prefix in it ("versions"), are skipped."""
    if rec_a is None or rec_b is None:
        return [] if rec_a is rec_b else ["protocol"]
    flat_a, flat_b = _flatten(rec_a), _flatten(rec_b)
    skipped = tuple(ignore) + tuple(f"{p}." for p in ignore)
    return sorted(k for k in flat_a.keys() | flat_b.keys()
                  if flat_a.get(k) != flat_b.get(k) and not k.startswith(skipped))


def feature_protocols(real, num_fake: int, reference_split: str, *, judge_net: torch.nn.Module | None = None,
                      inception=None, encoder=None, num_seeds: int = 1, arithmetic: str = "float32") -> dict:
    """The protocol records of one run entry, by feature family: "judge" (the judge's own features, images at their
    own size), "label-free" (bench.data.encoder's reader) and "inception" (a bench.data.inception.Backbone), each
    where it was used. real: the reference images."""
    reference_hash = content_hash(real)
    m, note = kid_subset_size(len(real), num_fake)  # KID's default subset size, as both families use it
    common = dict(num_real=len(real), num_fake=num_fake, reference_split=reference_split,
                  reference_hash=reference_hash, num_seeds=num_seeds, kid_subset_size=m, kid_subset_note=note,
                  arithmetic=arithmetic)
    out = {}
    if judge_net is not None:
        out["judge"] = protocol_record(backbone="judge", weights_sha256=module_hash(judge_net), resize="none",
                                       resize_size=None, **common)
    if encoder is not None:
        out["label-free"] = protocol_record(backbone=encoder.name, weights_sha256=encoder.weights_sha256,
                                            resize="none", resize_size=None, **common)
    if inception is not None:
        out["inception"] = protocol_record(backbone=inception.name, weights_sha256=inception.weights_sha256,
                                           resize=inception.resize, resize_size=inception.size, **common)
    return out


def describe_protocol(record: dict) -> str:
    """One line for a report, under the table whose numbers the record describes."""
    resize = f"{record['resize']} to {record['resize_size']}" if record.get("resize_size") else "no resize"
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items() if k != "python" and v)
    return (f"{record['backbone']} (weights sha256 {record['weights_sha256'][:12]}), {resize}; "
            f"{record['num_real']:,} real vs {record['num_fake']:,} generated, reference {record['reference_split']} "
            f"(sha256 {record['reference_hash'][:12]}); {record['num_seeds']} seed(s); KID subsets of "
            f"{record.get('kid_subset_size')}; {versions}.")


def compare_protocols(runs_a: list[dict], runs_b: list[dict], ignore: tuple[str, ...] = ()) -> dict:
    """For two results.json `runs` lists: {(dataset, model, family): [differing fields]} for every feature family
    (judge, inception) whose records differ between the two, each run's lowest-seed entry standing for it; a family
    that one run has and the other lacks differs in "protocol"."""
    def records(runs: list[dict]) -> dict:
        out = {}
        for run in sorted(runs, key=lambda r: -r.get("seed", 0)):  # the lowest seed is written last and wins
            for family, rec in (run.get("protocol") or {}).items():
                out[(run["dataset"], run["model"], family)] = rec
        return out

    rec_a, rec_b = records(runs_a), records(runs_b)
    shared_pairs = {k[:2] for k in rec_a} & {k[:2] for k in rec_b}
    out = {}
    for key in sorted(k for k in rec_a.keys() | rec_b.keys() if k[:2] in shared_pairs):
        if diff := comparable(rec_a.get(key), rec_b.get(key), ignore):
            out[key] = diff
    return out
