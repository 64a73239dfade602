"""ds-videocap: BLIP-2 / InstructBLIP video captioners trained on DeepSpeed (CE and SCST)."""
__version__ = "0.1.0"
