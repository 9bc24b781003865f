"""The annotate stage: facts about a flow that no single record carries by itself:
connection outcomes (refused, unanswered), DNS queries and answers, kernel drops and their
reasons. Runs on the datapath reader thread before enrichment."""
