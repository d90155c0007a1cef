"""The query prompts of the paper, usable by name wherever a prompt is given (`encode`, exports).

The two instructions of the Jasper/Stella paper ("Student architecture"): `s2p_query` (search query ->
passages) and `s2s_query` (semantic similarity). An export writes them into
`config_sentence_transformers.json`, so `SentenceTransformer.encode(..., prompt_name="s2p_query")` works too.
"""

from __future__ import annotations

PAPER_PROMPTS: dict[str, str] = {
    "s2p_query": "Instruct: Given a web search query, retrieve relevant passages that answer the query.\nQuery: ",
    "s2s_query": "Instruct: Retrieve semantically similar text.\nQuery: ",
}
