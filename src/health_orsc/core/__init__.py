"""core: what every layer shares and nothing above it decides - the records that flow between
stages and their content-addressed ids (records), user-fixable errors (errors), the config
model and its validation (config), reading the user's files (files) and the statistics
behind every quality claim (stats). No model calls, no snapshot layout, no Prefect."""
