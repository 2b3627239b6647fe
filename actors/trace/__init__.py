"""Trace record, show, check, diff and attack replay of SET traffic (not a party: it imports
protocol, broker and setpay only, never a party package)."""
