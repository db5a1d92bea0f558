"""Queue and task names, shared by the jobs that register them and the code that defers them.

The queues and their worker concurrency come from the source documents; the
Procfile says which process consumes which queue.
"""

MESSAGES_QUEUE = "campaign-messages"  # concurrency 5, 3 attempts, exponential backoff
NOTIFICATIONS_QUEUE = "campaign-notifications"  # concurrency 3, 2 attempts
RETRY_QUEUE = "message-retry"  # concurrency 3, 5 attempts, exponential
SCHEDULER_QUEUE = "campaign-scheduler"  # concurrency 2, 3 attempts, every minute
SENDER_QUEUE = "campaign-sender"  # fan-out and pump
MAINTENANCE_QUEUE = "maintenance"

FAN_OUT_TASK = "campaigns.fan_out"
PUMP_TASK = "campaigns.pump"
SEND_TASK = "messages.send"
RETRY_TASK = "messages.retry"
NOTIFY_TASK = "campaigns.notify"
