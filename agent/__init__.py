"""spiritlm-agent: a realtime voice agent built on Meta's SpiRit-LM."""
