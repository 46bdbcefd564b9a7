"""The paper trail of a dataset: fingerprints, duplicates, personal data, licence, contamination."""

from finetrace.papertrail.scan import ProvenanceConfig, ProvenanceReport, provenance

__all__ = ["ProvenanceConfig", "ProvenanceReport", "provenance"]
