"""Evaluation: the synthetic shapes world (scenes with ground truth, the offline demo's data) and the
quality harness (mask recall, search precision) that measures models and settings on it or on COCO."""
