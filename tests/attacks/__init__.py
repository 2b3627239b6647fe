"""Insider attacks: a party with a real broker login sending what no honest party would."""
