"""MusicGen LoRA toolkit: the library behind the scripts in finetune/lora/ and finetune/scripts/.

    audio, codes, modeling, generation   decoding audio, MusicGen's code layout, the model, sampling
    data/        metadata, datasets, the code cache, preparing a collection, example data
    training/    the training loop, its state, checkpoints, metrics log, runtime, guards
    evaluation/  comparing models, clip metrics and flags, style distance, CLAP, the listening report
    runs/        reading run directories: the runs table and the review gate
    cli/         the command-line layer: parsers, flag checks and each script's main()
    testing/     offline test models and test signals
    outputs      how every script writes files (atomic, umask, ownership, locks, full disks)
"""
__version__ = "0.2.0"
