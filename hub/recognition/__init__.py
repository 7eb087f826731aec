"""Mutual recognition of lab and exam results across institutions (检查检验结果互认)."""
