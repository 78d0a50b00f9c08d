"""Peak-traffic management: admission by criticality, a waiting room, rate limits, circuit
breakers, feature flags and capacity forecasts."""
