"""The markdown report ``paper_results.md`` and its figures, written from the results dictionary alone
(so that a merge of partial runs renders the same report)."""
