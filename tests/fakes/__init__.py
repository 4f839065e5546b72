"""Contract fakes of the services we cannot run here (LaunchDarkly, in-house flag services) and a status stand-in."""
