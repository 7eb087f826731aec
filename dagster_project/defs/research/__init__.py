"""Research: releases of the research zone, built from the recognition zone behind the k-anonymity gate."""
