"""CAT-Seg cost-aggregation decoder (`catseg.CATSegDecoder`), its config and its loss.

Submodules are imported explicitly (`ovss_cli.decoder.config` needs no torch).
"""
