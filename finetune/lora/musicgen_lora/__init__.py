"""MusicGen LoRA toolkit: the library behind the scripts in finetune/lora/ and finetune/scripts/.

Its folders are layers; a module imports only from its own layer or the ones below it (LAYERS,
lowest first; tests/test_layout.py fails on any import pointing up, function-local ones included):

    core         user errors and logging, writing files safely, run paths, threads, precision
    audio        reading audio at the model's rate, MusicGen's code layout and delay pattern, chroma
    model        loading a checkpoint, LoRA on its decoder, EnCodec codes, the training loss,
                 offline checkpoints with random weights
    data         metadata.json, the training dataset, the code cache and store, preparing a collection
    training     the loop, its state, checkpoints, metrics log, memory plan   } peers: training
    generation   prompts, sampling settings, generation window by window      } samples by generating
    evaluation   comparing models, clip metrics and flags, style distance, the listening test
    reporting    the runs table, the review gate, model cards, training curves
    cli          each command: its typed settings' parser, checks and main()
"""
__version__ = "0.2.0"

LAYERS = ("core", "audio", "model", "data", ("training", "generation"), "evaluation", "reporting", "cli")
