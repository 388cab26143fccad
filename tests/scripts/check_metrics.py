"""Parses a Prometheus text exposition with the official client's parser and checks vidmesh's
naming conventions. Usage: check_metrics.py FILE; prints the sample names, exits non-zero on a
violation.

Conventions (https://prometheus.io/docs/practices/naming/): names are snake_case with the
`vidmesh_` prefix; counters end in `_total`; durations are in seconds (`_seconds`); every
histogram has `_bucket` samples ending with `le="+Inf"` equal to `_count`, and a `_sum`.
"""

import re
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    problems, names = [], []
    for family in text_string_to_metric_families(text):
        names.extend(s.name for s in family.samples)
        if not re.fullmatch(r"vidmesh_[a-z][a-z0-9_]*", family.name):
            problems.append(f"{family.name}: not snake_case with the vidmesh_ prefix")
        if family.type == "counter" and not any(s.name.endswith("_total") for s in family.samples):
            problems.append(f"{family.name}: a counter without _total")
        if family.type == "histogram":
            if not family.name.endswith("_seconds"):
                problems.append(f"{family.name}: a duration histogram not in seconds")
            series = {}
            for s in family.samples:
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                series.setdefault(key, {})[s.name[len(family.name):], s.labels.get("le")] = s.value
            for key, values in series.items():
                inf, count = values.get(("_bucket", "+Inf")), values.get(("_count", None))
                if inf is None or count is None or inf != count or ("_sum", None) not in values:
                    problems.append(f"{family.name}{dict(key)}: +Inf bucket, _count and _sum do not agree")
        if not family.documentation:
            problems.append(f"{family.name}: no HELP text")
    print(" ".join(sorted(set(names))))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
