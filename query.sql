-- ICU mortality cohort and its event table (docs/interfaces.md §1), for MIMIC-IV 2.2 / 3.1.
--
-- Written once, in BigQuery Standard SQL (the dialect of MIT-LCP mimic-code); extract_cohort.py
-- runs it on BigQuery as is and translates it with sqlglot for DuckDB. Do not edit it to choose
-- tables or the window: those are parameters that extract_cohort.py applies.
--   Tables:  mimiciv_hosp.<table>, mimiciv_icu.<table>  (datasets renamed by --hosp-dataset/--icu-dataset)
--   @observation_hours FLOAT64  prediction time = intime + this many hours (default 48)
--   @lookback_hours    FLOAT64  also keep hadm-level events this long before intime (default 0)
--   @whole_stay        BOOL     the old whole-stay design: events until ICU discharge or death and
--                               times relative to that end. It LEAKS THE OUTCOME (retrospective only).
--   @vital_bin_hours   FLOAT64  0: each vital-sign charting is an event; H > 0: one event per item per H
--                               hours (the last value, with the bin's min and max)
--   @event_kinds       ARRAY<STRING>  the event types written (default: prescription, procedure, lab,
--                               microbiology, input; `ingredient`, `vital` and `output` on request).
--                               extract_cohort.py also takes the event blocks of kinds not asked for out of
--                               the query (so chartevents is read only for `vital`), and writes the rows of
--                               the vital_items CTE (the vital-sign items) from its VITAL_RULES.
--
-- Leakage rules: every event is timestamped when its information became available and kept only in
-- [intime - lookback, prediction time). Lab and microbiology results: storetime (charttime only where
-- storetime is null). Procedures and infusions (ICU rows with a start, an end and a charting time):
-- a row is kept if it was charted before the prediction time (storetime < prediction time), then at
-- GREATEST(starttime, storetime), or if it is still running at the prediction time (visible at the
-- bedside), then at starttime; a row that ended before the prediction time but was charted after it
-- is left out. Vital signs (chartevents) and outputs (outputevents), measurements charted at charttime
-- and stored at storetime, as lab results: at storetime (charttime where it is null). Prescriptions:
-- starttime (the table has no charting time). The cohort is adults still in the ICU and alive at the
-- prediction time, so the label (in-hospital death) always lies after it.
--
-- Joins: prescriptions, labs and microbiology by hadm_id (lab and microbiology rows without hadm_id by
-- subject_id and the window that contains them); procedures, inputs, ingredients, vital signs and outputs
-- by stay_id.

-- A number at `digits` significant figures, without trailing ".0" (54.32109 -> 54.3, 1000.0 -> 1000).
CREATE TEMP FUNCTION fmt_num(x FLOAT64, digits INT64) AS (
  CASE
    WHEN x IS NULL OR IS_NAN(x) OR IS_INF(x) THEN NULL
    WHEN x = 0 THEN '0'
    ELSE REGEXP_REPLACE(
      CAST(ROUND(x, digits - 1 - CAST(FLOOR(LOG10(ABS(x))) AS INT64)) AS STRING), r'\.0$', '')
  END
);

-- When an ICU row (procedure, input, ingredient) is known at the bedside: when it was charted, if that was
-- before the prediction time (and not before it started); else at its start, for a row still running at the
-- prediction time (the WHERE clause of icu_events keeps no other row).
CREATE TEMP FUNCTION known_at(starttime DATETIME, storetime DATETIME, prediction_time DATETIME) AS (
  CASE WHEN storetime < prediction_time THEN GREATEST(starttime, storetime) ELSE starttime END
);

-- The share of an amount given over [starttime, endtime] that was given before the prediction time (the
-- full amount of a row running past it would reveal how long the patient lived).
CREATE TEMP FUNCTION amount_before(amount FLOAT64, starttime DATETIME, endtime DATETIME, prediction_time DATETIME) AS (
  CASE
    WHEN endtime > prediction_time AND endtime > starttime
      THEN amount * DATETIME_DIFF(prediction_time, starttime, SECOND) / DATETIME_DIFF(endtime, starttime, SECOND)
    ELSE amount
  END
);

-- The result a microbiology comment states, in a few words, for rows without an organism (MIMIC-IV keeps
-- many results only in `comments`). Findings and positives are matched before negatives, and negatives
-- only by explicit phrasings, so a positive never reads as negative; anything else keeps the lab's first
-- sentence. 'cancelled' marks a test that gave no result (the row is dropped); NULL: nothing stated
-- (no comment, or only the deidentification mark ___).
CREATE TEMP FUNCTION micro_comment_result(comments STRING) AS (
  CASE
    WHEN comments IS NULL OR TRIM(REPLACE(comments, '___', '')) = '' THEN NULL
    WHEN REGEXP_CONTAINS(comments, r'(?i)test cancelled|cancelled by laboratory|test not performed') THEN 'cancelled'
    WHEN REGEXP_CONTAINS(comments, r'(?i)results are invalid|submit another specimen') THEN 'specimen rejected'
    -- Gram stain findings open the comment or follow a grade such as "4+ (>10 per 1000X FIELD):"
    WHEN REGEXP_CONTAINS(comments, r'(?i)(^|:)\s*gram negative rod') THEN 'gram-negative rods seen'
    WHEN REGEXP_CONTAINS(comments, r'(?i)(^|:)\s*gram negative (cocci|diplococci)') THEN 'gram-negative cocci seen'
    WHEN REGEXP_CONTAINS(comments, r'(?i)(^|:)\s*gram positive cocci\W+in chains') THEN 'gram-positive cocci in chains seen'
    WHEN REGEXP_CONTAINS(comments, r'(?i)(^|:)\s*gram positive cocci\W+in (pairs and )?clusters') THEN 'gram-positive cocci in clusters seen'
    WHEN REGEXP_CONTAINS(comments, r'(?i)(^|:)\s*gram positive cocci') THEN 'gram-positive cocci seen'
    WHEN REGEXP_CONTAINS(comments, r'(?i)(^|:)\s*gram positive (rod|bacilli)') THEN 'gram-positive rods seen'
    WHEN REGEXP_CONTAINS(comments, r'(?i)(^|:)\s*(budding )?yeast') THEN 'yeast seen'
    WHEN REGEXP_CONTAINS(comments, r'(?i)^\s*(positive|reactive)\b') THEN 'positive'
    WHEN REGEXP_CONTAINS(comments, r'(?i)^\s*equivocal') THEN 'equivocal'
    WHEN REGEXP_CONTAINS(comments, r'(?i)^\s*no (significant )?growth') THEN 'no growth'
    WHEN REGEXP_CONTAINS(comments, r'(?i)no microorganisms seen') THEN 'no organisms seen'
    WHEN REGEXP_CONTAINS(comments, r'(?i)^\s*(negative|nonreactive|non-reactive|no\s|gram stain negative)') THEN 'negative'
    WHEN REGEXP_CONTAINS(comments, r'(?i)^[^.]*\bnot detected') THEN 'negative'
    WHEN REGEXP_CONTAINS(comments, r'(?i)^[^.]*\bdetected\b') THEN 'positive'
    WHEN REGEXP_CONTAINS(comments, r'(?i)\bno [a-z ]+ (isolated|found|seen)\b') THEN 'negative'
    WHEN REGEXP_CONTAINS(comments, r'(?i)^\s*<\s*10,000 (organisms|cfu)/ml') THEN '<10,000 CFU/mL'
    WHEN REGEXP_CONTAINS(comments, r'(?i)overgrowth of swarming proteus') THEN 'overgrowth of swarming Proteus'
    WHEN REGEXP_CONTAINS(comments, r'(?i)commensal respiratory flora absent') THEN 'commensal respiratory flora absent'
    WHEN REGEXP_CONTAINS(comments, r'(?i)commensal respiratory flora') THEN 'commensal respiratory flora'
    WHEN REGEXP_CONTAINS(comments, r'(?i)mixed bacterial (flora|types)|contamination') THEN 'mixed flora, likely contamination'
    ELSE LOWER(RTRIM(TRIM(SUBSTR(REGEXP_REPLACE(REGEXP_REPLACE(comments, r'\.\s\s.*$', ''), r'_{3}|\s+', ' '), 1, 60)), '.'))
  END
);

WITH stays AS (
  SELECT
    ie.subject_id,
    ie.hadm_id,
    ie.stay_id,
    ie.intime,
    ie.outtime,
    ie.first_careunit,
    pat.gender,
    adm.race,
    adm.marital_status,
    adm.admission_type,
    adm.admission_location,
    adm.insurance,
    adm.deathtime,
    pat.dod,
    adm.hospital_expire_flag,
    -- age at admission as mimic-code's age concept computes it
    CAST(pat.anchor_age + EXTRACT(YEAR FROM adm.admittime) - pat.anchor_year AS FLOAT64) AS patient_age,
    CASE
      WHEN @whole_stay THEN LEAST(ie.outtime, COALESCE(adm.deathtime, ie.outtime))
      ELSE DATETIME_ADD(ie.intime, INTERVAL CAST(ROUND(@observation_hours * 60) AS INT64) MINUTE)
    END AS prediction_time,
    DATETIME_SUB(ie.intime, INTERVAL CAST(ROUND(@lookback_hours * 60) AS INT64) MINUTE) AS window_start
  FROM mimiciv_icu.icustays AS ie
  INNER JOIN mimiciv_hosp.admissions AS adm ON adm.hadm_id = ie.hadm_id
  INNER JOIN mimiciv_hosp.patients AS pat ON pat.subject_id = ie.subject_id
),

cohort AS (
  SELECT *
  FROM stays
  WHERE patient_age >= 18
    AND prediction_time > intime
    AND (
      @whole_stay
      OR (
        outtime > prediction_time                                   -- still in the ICU
        AND (deathtime IS NULL OR deathtime > prediction_time)      -- and alive
        AND (dod IS NULL OR dod >= DATE(prediction_time))
      )
    )
),

result_keys AS (
  -- How lab and microbiology rows find their stay: a row belongs to the stays of its admission; a row
  -- without hadm_id (e.g. drawn in clinic, or before the admission was opened) to the stay of the same
  -- patient whose window contains it, as in MIT-LCP mimic-code. Joining on (subject_id, hadm_id or -1)
  -- keeps the join an equality join: no lab row meets the stays of the patient's other admissions.
  SELECT stay_id, subject_id, hadm_id AS hadm_key, window_start, prediction_time FROM cohort
  UNION ALL
  SELECT stay_id, subject_id, -1 AS hadm_key, window_start, prediction_time FROM cohort
),

prescription_events AS (
  SELECT
    c.stay_id,
    rx.starttime AS event_time,
    'prescription' AS event_type,
    CONCAT('Prescription: ', ARRAY_TO_STRING([
      NULLIF(TRIM(rx.drug), ''),
      COALESCE(fmt_num(SAFE_CAST(rx.dose_val_rx AS FLOAT64), 3), NULLIF(TRIM(rx.dose_val_rx), '')),
      NULLIF(TRIM(rx.dose_unit_rx), ''),
      NULLIF(TRIM(rx.route), '')
    ], ' ')) AS event_text,
    'prescriptions' AS source_table,
    -- one pharmacy order can list several drugs (e.g. a drug and its diluent)
    CONCAT(CAST(rx.pharmacy_id AS STRING), ':', COALESCE(rx.drug, '')) AS source_id
  FROM cohort AS c
  INNER JOIN mimiciv_hosp.prescriptions AS rx ON rx.hadm_id = c.hadm_id
  WHERE rx.starttime >= c.window_start AND rx.starttime < c.prediction_time
    AND NULLIF(TRIM(rx.drug), '') IS NOT NULL
),

lab_events AS (
  SELECT
    c.stay_id,
    COALESCE(le.storetime, le.charttime) AS event_time,
    'lab' AS event_type,
    CONCAT('Lab: ', ARRAY_TO_STRING([
      CASE
        WHEN dl.fluid IS NULL OR dl.fluid = 'Blood' OR STRPOS(LOWER(dl.label), LOWER(dl.fluid)) > 0
          THEN NULLIF(TRIM(dl.label), '')
        ELSE CONCAT(TRIM(dl.fluid), ' ', TRIM(dl.label))
      END,
      COALESCE(fmt_num(le.valuenum, 3), NULLIF(TRIM(le.value), '')),
      NULLIF(TRIM(le.valueuom), ''),
      CASE
        WHEN le.ref_range_lower IS NOT NULL AND le.ref_range_upper IS NOT NULL
          THEN CONCAT('(ref ', fmt_num(le.ref_range_lower, 3), '-', fmt_num(le.ref_range_upper, 3), ')')
      END,
      NULLIF(TRIM(le.flag), '')
    ], ' ')) AS event_text,
    'labevents' AS source_table,
    CAST(le.labevent_id AS STRING) AS source_id
  FROM result_keys AS c
  INNER JOIN mimiciv_hosp.labevents AS le
    ON le.subject_id = c.subject_id AND COALESCE(le.hadm_id, -1) = c.hadm_key
  LEFT JOIN mimiciv_hosp.d_labitems AS dl ON dl.itemid = le.itemid
  WHERE COALESCE(le.storetime, le.charttime) >= c.window_start
    AND COALESCE(le.storetime, le.charttime) < c.prediction_time
),

microbiology_events AS (
  -- One row per organism, or per organism and antibiotic (susceptibility), or per test without an
  -- organism, whose result is then in `comments` (see micro_comment_result). Cancelled tests (org_name
  -- CANCELLED or a "TEST CANCELLED" comment) are no results and are left out.
  SELECT
    stay_id,
    event_time,
    'microbiology' AS event_type,
    CONCAT('Microbiology: ', ARRAY_TO_STRING([specimen, '-', result], ' '), susceptibility) AS event_text,
    'microbiologyevents' AS source_table,
    source_id
  FROM (
    SELECT
      c.stay_id,
      COALESCE(mb.storetime, mb.charttime) AS event_time,
      NULLIF(TRIM(mb.spec_type_desc), '') AS specimen,
      CASE
        WHEN UPPER(TRIM(mb.org_name)) = 'CANCELLED' THEN NULL
        WHEN UPPER(TRIM(mb.org_name)) = 'POSITIVE'
          THEN CONCAT(COALESCE(NULLIF(TRIM(mb.test_name), ''), 'test'), ', positive')
        WHEN NULLIF(TRIM(mb.org_name), '') IS NOT NULL THEN TRIM(mb.org_name)
        WHEN micro_comment_result(mb.comments) = 'cancelled' THEN NULL
        ELSE CONCAT(COALESCE(NULLIF(TRIM(mb.test_name), ''), 'test'), ', ',
                    COALESCE(micro_comment_result(mb.comments), 'result not recorded'))
      END AS result,
      CASE
        WHEN NULLIF(TRIM(mb.ab_name), '') IS NOT NULL
          THEN CONCAT(', ', ARRAY_TO_STRING([TRIM(mb.ab_name),
            CASE UPPER(TRIM(mb.interpretation))
              WHEN 'S' THEN 'sensitive'
              WHEN 'R' THEN 'resistant'
              WHEN 'I' THEN 'intermediate'
              WHEN 'P' THEN 'pending'
              ELSE NULLIF(TRIM(mb.interpretation), '')
            END], ' '))
        ELSE ''
      END AS susceptibility,
      CAST(mb.microevent_id AS STRING) AS source_id
    FROM result_keys AS c
    INNER JOIN mimiciv_hosp.microbiologyevents AS mb
      ON mb.subject_id = c.subject_id AND COALESCE(mb.hadm_id, -1) = c.hadm_key
    WHERE COALESCE(mb.storetime, mb.charttime) >= c.window_start
      AND COALESCE(mb.storetime, mb.charttime) < c.prediction_time
  )
  WHERE result IS NOT NULL
),

icu_events AS (
  -- The three ICU tables whose rows have a start, an end and a charting time: procedures, the infusions
  -- and boluses themselves (inputs: drug or fluid, amount, rate) and their ingredients (Water, IVF
  -- ingredient, Calories, ...: every demo ingredient row shares its orderid with an inputevents row, so
  -- they repeat the infusion as its components; written only when @event_kinds asks for them).
  -- ICU rows are charted after the fact, often hours after they ended. A row is kept if it was charted
  -- before the prediction time (then known at its charting time, or at its start if it was charted
  -- ahead) or if it is still running at the prediction time (then visible at the bedside since it
  -- started); a row that ended before the prediction time but was charted after it is left out.
  -- A procedure's duration (value) is known only at its end, so it is not shown. An amount covers
  -- [starttime, endtime]; where that runs past the prediction time only the share given before it is
  -- shown (the full amount would reveal survival). Amounts and rates at two significant figures: a
  -- 54.32109 mL segment is 54 mL.
  SELECT
    c.stay_id,
    known_at(r.starttime, r.storetime, c.prediction_time) AS event_time,
    r.event_type,
    CONCAT(r.text_prefix, ARRAY_TO_STRING([
      COALESCE(NULLIF(TRIM(di.label), ''), CONCAT('item ', CAST(r.itemid AS STRING))),
      fmt_num(amount_before(r.amount, r.starttime, r.endtime, c.prediction_time), 2),
      NULLIF(TRIM(r.amountuom), ''),
      CASE WHEN r.rate IS NOT NULL THEN CONCAT('at ', fmt_num(r.rate, 2), ' ', COALESCE(TRIM(r.rateuom), '')) END
    ], ' ')) AS event_text,
    r.source_table,
    CONCAT(CAST(r.orderid AS STRING), ':', CAST(r.itemid AS STRING)) AS source_id
  FROM cohort AS c
  INNER JOIN (
    SELECT 'procedure' AS event_type, 'Procedure: ' AS text_prefix, 'procedureevents' AS source_table,
      stay_id, starttime, endtime, storetime, itemid, orderid, statusdescription,
      CAST(NULL AS FLOAT64) AS amount, CAST(NULL AS STRING) AS amountuom,
      CAST(NULL AS FLOAT64) AS rate, CAST(NULL AS STRING) AS rateuom
    FROM mimiciv_icu.procedureevents
    UNION ALL
    SELECT 'input', 'Input: ', 'inputevents',
      stay_id, starttime, endtime, storetime, itemid, orderid, statusdescription,
      amount, amountuom, rate, rateuom
    FROM mimiciv_icu.inputevents
    UNION ALL
    SELECT 'ingredient', 'Ingredient: ', 'ingredientevents',
      stay_id, starttime, endtime, storetime, itemid, orderid, statusdescription,
      amount, amountuom, CAST(NULL AS FLOAT64), CAST(NULL AS STRING)
    FROM mimiciv_icu.ingredientevents
  ) AS r ON r.stay_id = c.stay_id
  LEFT JOIN mimiciv_icu.d_items AS di ON di.itemid = r.itemid
  WHERE r.starttime >= c.window_start AND r.starttime < c.prediction_time
    AND (r.storetime < c.prediction_time OR r.endtime > c.prediction_time)
    AND COALESCE(r.statusdescription, '') != 'Rewritten'
),

vital_items AS (
  -- The chartevents items written as `vital`: mimic-code's vital signs and GCS components
  -- (mimic-iv/concepts/measurement/vitalsign.sql, gcs.sql), one row each: itemid; label and unit as written
  -- (unit NULL: the row's valueuom); the plausible range of valuenum (low < valuenum < high, or <= high where
  -- high_inclusive; NULL: no bound); fahrenheit (written in degrees Celsius); intubated_value (the `value`
  -- that means intubated, not a score: GCS verbal "No Response-ETT"). extract_cohort.py writes the rows here
  -- from its VITAL_RULES, the one list of these items (the MEDS import reads it too); this placeholder has none.
  SELECT CAST(NULL AS INT64) AS itemid, CAST(NULL AS STRING) AS label, CAST(NULL AS STRING) AS unit,
    CAST(NULL AS FLOAT64) AS low, CAST(NULL AS FLOAT64) AS high, CAST(NULL AS BOOL) AS high_inclusive,
    CAST(NULL AS BOOL) AS fahrenheit, CAST(NULL AS STRING) AS intubated_value
  FROM UNNEST([1])
  WHERE FALSE
),

vital_rows AS (
  -- Each charting of a vital sign or GCS component in the window, known when stored (storetime: nurses
  -- validate monitor values, often several hours at once; charttime where storetime is null), with its
  -- value converted (Fahrenheit -> Celsius) and kept only inside the item's plausible range, as mimic-code
  -- does. A GCS verbal response of an intubated patient is a word, not a number: `value` NULL, `word` set.
  SELECT
    c.stay_id,
    c.prediction_time,
    ce.itemid,
    ce.charttime,
    COALESCE(ce.storetime, ce.charttime) AS known_time,
    vi.label,
    CASE WHEN ce.value = vi.intubated_value THEN NULL ELSE COALESCE(vi.unit, NULLIF(TRIM(ce.valueuom), '')) END AS unit,
    CASE
      WHEN ce.value = vi.intubated_value THEN NULL
      WHEN vi.fahrenheit THEN (ce.valuenum - 32) / 1.8
      ELSE ce.valuenum
    END AS value,
    CASE WHEN ce.value = vi.intubated_value THEN vi.intubated_value END AS word
  FROM cohort AS c
  INNER JOIN mimiciv_icu.chartevents AS ce ON ce.stay_id = c.stay_id
  INNER JOIN vital_items AS vi ON vi.itemid = ce.itemid
  WHERE COALESCE(ce.storetime, ce.charttime) >= c.window_start
    AND COALESCE(ce.storetime, ce.charttime) < c.prediction_time
    AND (
      ce.value = vi.intubated_value
      OR (
        ce.valuenum IS NOT NULL
        AND (vi.low IS NULL OR ce.valuenum > vi.low)
        AND (vi.high IS NULL OR ce.valuenum < vi.high OR (vi.high_inclusive AND ce.valuenum = vi.high))
      )
    )
),

vital_events AS (
  -- @vital_bin_hours = 0: each charting is an event ("Vital: Heart Rate 92 bpm"). Above 0: one event per
  -- item per bin of that many hours of charttime, counted back from the prediction time: the bin's last
  -- charting, with the lowest and highest value of the bin ("Vital: Heart Rate 92 bpm (min 80, max 110)", so
  -- the value channel reads the last), known when its last row was stored (every row of a bin was stored
  -- before the prediction time). source_id names the charting shown.
  SELECT
    stay_id,
    known_time AS event_time,
    'vital' AS event_type,
    CONCAT('Vital: ', ARRAY_TO_STRING([label, COALESCE(word, fmt_num(value, 3)), unit], ' ')) AS event_text,
    'chartevents' AS source_table,
    CONCAT(CAST(itemid AS STRING), ':', CAST(charttime AS STRING)) AS source_id
  FROM vital_rows
  WHERE @vital_bin_hours <= 0
  UNION ALL
  SELECT
    stay_id,
    bin_known_time AS event_time,
    'vital' AS event_type,
    CONCAT('Vital: ', ARRAY_TO_STRING([
      label,
      COALESCE(word, fmt_num(value, 3)),
      unit,
      CASE
        WHEN bin_min IS NOT NULL THEN CONCAT('(min ', fmt_num(bin_min, 3), ', max ', fmt_num(bin_max, 3), ')')
      END
    ], ' ')) AS event_text,
    'chartevents' AS source_table,
    CONCAT(CAST(itemid AS STRING), ':', CAST(charttime AS STRING)) AS source_id
  FROM (
    SELECT
      *,
      MAX(known_time) OVER (PARTITION BY stay_id, itemid, bin_number) AS bin_known_time,
      MIN(value) OVER (PARTITION BY stay_id, itemid, bin_number) AS bin_min,
      MAX(value) OVER (PARTITION BY stay_id, itemid, bin_number) AS bin_max,
      ROW_NUMBER() OVER (
        PARTITION BY stay_id, itemid, bin_number ORDER BY charttime DESC, known_time DESC, value DESC
      ) AS last_first
    FROM (
      SELECT
        *,
        FLOOR(DATETIME_DIFF(prediction_time, charttime, SECOND) / (3600 * @vital_bin_hours)) AS bin_number
      FROM vital_rows
      WHERE @vital_bin_hours > 0
    )
  )
  WHERE last_first = 1
),

output_events AS (
  -- Urine, drains and other fluid outputs (outputevents: a volume in mL measured at charttime), known when
  -- stored, as vital signs. The d_items label without its "#1"-style number (Chest Tube #1 and #2 are one
  -- item, and the value channel reads the volume); an item without a label: "fluid output ... (item N)".
  SELECT
    c.stay_id,
    COALESCE(oe.storetime, oe.charttime) AS event_time,
    'output' AS event_type,
    CONCAT('Output: ', ARRAY_TO_STRING([
      COALESCE(NULLIF(TRIM(REGEXP_REPLACE(di.label, r'\s*#\d+', '')), ''), 'fluid output'),
      fmt_num(oe.value, 3),
      NULLIF(TRIM(oe.valueuom), ''),
      CASE
        WHEN NULLIF(TRIM(REGEXP_REPLACE(di.label, r'\s*#\d+', '')), '') IS NULL
          THEN CONCAT('(item ', CAST(oe.itemid AS STRING), ')')
      END
    ], ' ')) AS event_text,
    'outputevents' AS source_table,
    CONCAT(CAST(oe.itemid AS STRING), ':', CAST(oe.charttime AS STRING)) AS source_id
  FROM cohort AS c
  INNER JOIN mimiciv_icu.outputevents AS oe ON oe.stay_id = c.stay_id
  LEFT JOIN mimiciv_icu.d_items AS di ON di.itemid = oe.itemid
  WHERE oe.value IS NOT NULL
    AND COALESCE(oe.storetime, oe.charttime) >= c.window_start
    AND COALESCE(oe.storetime, oe.charttime) < c.prediction_time
),

all_events AS (
  -- the event blocks (extract_cohort.EVENT_BLOCKS); those of kinds not asked for are taken out before the run
  SELECT * FROM prescription_events
  UNION ALL SELECT * FROM lab_events
  UNION ALL SELECT * FROM microbiology_events
  UNION ALL SELECT * FROM icu_events
  UNION ALL SELECT * FROM vital_events
  UNION ALL SELECT * FROM output_events
),

events AS (
  -- The same statement twice at the same moment (e.g. two pharmacy rows of one order) tells the
  -- model nothing new: keep one, the lowest source row. An ICU row is one administration or procedure
  -- of its own (two bags charted in one go are two bags), so ICU rows are never merged; nor are two
  -- chartings of a vital sign or an output stored together (a nurse validates several hours at once),
  -- only the same item charted twice for the same time with the same value.
  SELECT
    stay_id,
    event_time,
    event_type,
    TRIM(REGEXP_REPLACE(event_text, r'\s+', ' ')) AS event_text,
    source_table,
    source_id
  FROM all_events
  WHERE event_time IS NOT NULL
    AND event_type IN UNNEST(@event_kinds)
  QUALIFY ROW_NUMBER() OVER (
    PARTITION BY stay_id, event_time, event_type, TRIM(REGEXP_REPLACE(event_text, r'\s+', ' ')),
      CASE
        WHEN source_table IN ('procedureevents', 'inputevents', 'ingredientevents', 'chartevents', 'outputevents')
          THEN source_id
      END
    ORDER BY source_table, source_id
  ) = 1
)

SELECT
  c.subject_id,
  c.hadm_id,
  c.stay_id,
  e.event_time,
  e.event_type,
  e.event_text,
  ROUND(DATETIME_DIFF(c.prediction_time, e.event_time, SECOND) / 60.0, 2) AS relative_time_to_final_event,
  c.gender,
  c.race,
  c.marital_status,
  c.admission_type,
  c.admission_location,
  c.insurance,
  c.first_careunit,
  c.patient_age,
  c.hospital_expire_flag AS mortality,
  c.prediction_time,
  e.source_table,
  e.source_id
FROM cohort AS c
LEFT JOIN events AS e ON e.stay_id = c.stay_id
ORDER BY c.stay_id, e.event_time, e.event_type, e.event_text, e.source_table, e.source_id
