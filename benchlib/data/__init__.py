"""Real data without internet: train (or take) a tokenizer and write Megatron's indexed dataset.

`benchlib data prepare` reads a `.jsonl` or `.txt` corpus, trains a byte-level BPE tokenizer on
it with the `tokenizers` library (or loads a local Hugging Face tokenizer folder), and writes
`<PREFIX>.bin` / `<PREFIX>.idx` with Megatron-Core's own `IndexedDatasetBuilder`. A run with
`DATA=real DATA_PATH=<PREFIX> TOKENIZER_MODEL=<folder>` trains on it (see docs/data.md).

Modules: `corpus` (streaming documents out of a file), `tokenizer` (train / load / save),
`indexed` (the .bin/.idx writer), `prepare` (the whole step), `cli` (the subcommand).
"""
