#!/usr/bin/env python3
"""Validates Prometheus text exposition on stdin with prometheus_client's own parser, plus
the rules the parser leaves alone (histogram buckets cumulative, +Inf equal to _count, every
family typed, and documented unless --help-optional: swift-metrics has no help texts), and
prints the samples as JSON for the test to check values: {"types": {...}, "samples": [...]}.
Exits 1 naming the first problem."""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    if not text.endswith("\n"):
        print("exposition does not end with a newline")
        return 1
    types, samples = {}, []
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as error:  # the parser's own verdict
        print(f"not valid Prometheus text: {error}")
        return 1
    for family in families:
        if family.type == "unknown":
            print(f"family {family.name} has no TYPE")
            return 1
        if not family.documentation and "--help-optional" not in sys.argv:
            print(f"family {family.name} has no HELP")
            return 1
        types[family.name] = family.type
        if family.type == "histogram":
            series = {}
            for s in family.samples:
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                series.setdefault(key, {"buckets": [], "count": None})
                if s.name.endswith("_bucket"):
                    series[key]["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_count"):
                    series[key]["count"] = s.value
            for key, h in series.items():
                buckets = sorted(h["buckets"])
                if not buckets or not math.isinf(buckets[-1][0]):
                    print(f"{family.name}{dict(key)}: no +Inf bucket")
                    return 1
                values = [v for _, v in buckets]
                if values != sorted(values):
                    print(f"{family.name}{dict(key)}: buckets not cumulative: {values}")
                    return 1
                if h["count"] != values[-1]:
                    print(f"{family.name}{dict(key)}: _count {h['count']} != +Inf bucket {values[-1]}")
                    return 1
        for s in family.samples:
            if s.value < 0 or math.isnan(s.value):
                print(f"{s.name}{s.labels}: value {s.value}")
                return 1
            samples.append([s.name, s.labels, s.value])
    print(json.dumps({"types": types, "samples": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
