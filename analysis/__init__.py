"""analysis: figures and tables made only from files under results/."""
