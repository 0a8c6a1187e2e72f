"""The agent: sources from a YAML config, run on one loop into Kinesis (``kingest run -c``)."""

from kingest.agent.config import AgentConfig, load_config
from kingest.agent.runner import Agent

__all__ = ["Agent", "AgentConfig", "load_config"]
