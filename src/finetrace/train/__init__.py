"""Fine-tuning: examples from records, the training loop, `finetrace finetune`."""
