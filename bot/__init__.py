"""pinwatch: Slack alerts for WhatsApp Business two-step-verification changes."""

__version__ = "0.1.0"
