"""Metrics over capture time, as OpenMetrics text with timestamps.

``netmon analyze --format openmetrics`` samples every metric once per
interval of packet time and writes all samples at the end, each family's
samples together as the format requires. ``promtool tsdb
create-blocks-from openmetrics`` loads the result into Prometheus, so the
dashboard can show a capture's history.
"""

from prometheus_client.openmetrics.exposition import generate_latest


class OpenMetricsRecorder:
    """Collect timestamped snapshots of a registry and render them once.

    TODO: every sample stays in memory until the end (about 900 bytes each,
    measured: 274 MB for 304,000 samples), so a long capture with many
    series needs a larger --sample-interval or a spill to disk.
    """

    def __init__(self, registry):
        self.registry = registry
        self.families = {}  # name -> family, in first-seen order
        self.samples = {}  # name -> list of samples across snapshots

    def snapshot(self, ts):
        """Record every sample of the registry as of packet time ``ts`` (epoch seconds)."""
        for family in self.registry.collect():
            if family.name not in self.families:
                self.families[family.name] = family
                self.samples[family.name] = []
            stamped = self.samples[family.name]
            for sample in family.samples:
                stamped.append(sample._replace(timestamp=ts))

    def collect(self):
        for name, family in self.families.items():
            family.samples = _group_by_series(self.samples[name])
            yield family

    def render(self):
        return generate_latest(self).decode("utf-8")


def _group_by_series(samples):
    """Order samples series by series, keeping time order within each.

    OpenMetrics wants all points of one metric (a label set; for histograms
    the buckets, count and sum together) to be contiguous.
    """
    groups = {}
    for sample in samples:
        key = tuple(sorted((name, value) for name, value in sample.labels.items() if name != "le"))
        groups.setdefault(key, []).append(sample)
    return [sample for group in groups.values() for sample in group]
