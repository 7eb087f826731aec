"""The research domain's definitions: research releases."""

from dagster import Definitions

from dagster_project.defs.research.assets import research_release

defs = Definitions(assets=[research_release])
