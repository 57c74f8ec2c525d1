"""Publishing a finished LoRA: the samples worth showing, the model card, the folder and the Hub upload."""
