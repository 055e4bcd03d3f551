"""JSON decoding with a schema: extract a record from a short text as JSON valid for `SCHEMA`.

Long property names, enums and the braces and quotes between them are forced by the schema: the
runtime's jump-forward appends them without decoding them one token at a time.
"""

import sgc

SCHEMA = {
    "type": "object",
    "properties": {
        "full_name": {"type": "string", "maxLength": 32},
        "age_in_years": {"type": "integer", "minimum": 0, "maximum": 120},
        "primary_occupation": {"type": "string", "maxLength": 32},
        "home_city": {"type": "string", "maxLength": 24},
        "employment_status": {"enum": ["employed_full_time", "employed_part_time", "self_employed", "retired"]},
        "favourite_programming_language": {"enum": ["python", "rust", "javascript", "haskell"]},
    },
    "required": ["full_name", "age_in_years", "primary_occupation", "home_city", "employment_status",
                 "favourite_programming_language"],
    "additionalProperties": False,
}


@sgc.function
def json_extract(s, document):
    s += sgc.system("You extract structured records from text. Reply with JSON only.")
    s += sgc.user("Extract the person described below as a JSON record.\n\n" + document)
    s += sgc.assistant(sgc.gen("record", json_schema=SCHEMA))
