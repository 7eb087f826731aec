-- Vendor D: a legacy US hospital export shaped like a public research database, unlike the
-- demo vendors. No table has a primary key; birth dates and admission dates are written with
-- two-digit years (MM/DD/YY); times are New York local time (daylight saving); one lab feeds
-- text results that mean "no result" and comparators in words; prescriptions give doses as
-- ranges (325-650) and with thousands separators (25,000), and live in two tables (current and
-- archive) read through one query. Each row's comment says what it exercises.

CREATE TABLE PATIENTS (SUBJECT_ID INTEGER, GENDER TEXT, DOB TEXT, DOD TEXT);
INSERT INTO PATIENTS VALUES (101, 'M', '10/23/64', NULL);                  -- 64 -> 1964 (pivot 1920)
INSERT INTO PATIENTS VALUES (102, 'F', '07/04/05', NULL);                  -- 05 -> 2005
INSERT INTO PATIENTS VALUES (103, 'F', '9999-12-31', NULL);                -- implausible birth date: quarantined
INSERT INTO PATIENTS VALUES (104, 'M', '03/15/45', '2019-03-01 00:00:00'); -- died 2019 (EST, -05:00)
INSERT INTO PATIENTS VALUES (105, 'M', '11/02/80', '1979-05-05 10:00:00'); -- death before birth: quarantined
INSERT INTO PATIENTS VALUES (106, 'F', '02/29/00', NULL);                  -- 00 -> 2000, a leap year

CREATE TABLE ADMISSIONS (HADM_ID INTEGER, SUBJECT_ID INTEGER, ADMIT_DATE TEXT, ADMIT_TIME TEXT,
                         DISCHTIME TEXT, ADMISSION_TYPE TEXT, DELETED INTEGER);
INSERT INTO ADMISSIONS VALUES (2001, 101, '01/15/24', '08:30', '2024-01-20 11:00:00', 'EMERGENCY', 0); -- winter: -05:00
INSERT INTO ADMISSIONS VALUES (2002, 101, '07/04/24', '23:15', '2024-07-06 09:00:00', 'ELECTIVE', 0);  -- summer: -04:00
INSERT INTO ADMISSIONS VALUES (2003, 102, '03/10/24', '02:30', NULL, 'EMERGENCY', 0);      -- in the spring-forward gap: quarantined
INSERT INTO ADMISSIONS VALUES (2004, 102, '06/01/04', '10:00', NULL, 'EMERGENCY', 0);      -- 2004, before the patient's birth (2005): quarantined
INSERT INTO ADMISSIONS VALUES (2005, 104, '11/03/24', '01:30', '2024-11-05 12:00:00', 'URGENT', 0);   -- fall-back hour: first occurrence (-04:00)
INSERT INTO ADMISSIONS VALUES (2006, 101, '05/05/24', '09:00', NULL, 'EMERGENCY', 1);      -- DELETED: excluded by where, never read
INSERT INTO ADMISSIONS VALUES (2007, 104, '02/02/24', '10:00', NULL, NULL, NULL);          -- DELETED NULL: ne keeps it
INSERT INTO ADMISSIONS VALUES (2008, 101, '03/03/24', '12:00', '2151-03-05 12:00:00', 'ELECTIVE', 0); -- shifted year: quarantined

CREATE TABLE DIAGNOSES_ICD (SUBJECT_ID INTEGER, HADM_ID INTEGER, SEQ_NUM INTEGER, ICD9_CODE TEXT, LONG_TITLE TEXT);
INSERT INTO DIAGNOSES_ICD VALUES (101, 2001, 1, '51881', 'Acute respiratory failure');                    -- 518.81
INSERT INTO DIAGNOSES_ICD VALUES (101, 2001, 2, '4019', 'Unspecified essential hypertension');             -- 401.9
INSERT INTO DIAGNOSES_ICD VALUES (101, 2001, 3, 'E8497', 'Accidents occurring in other specified places'); -- E849.7
INSERT INTO DIAGNOSES_ICD VALUES (101, 2001, 4, 'V4581', 'Aortocoronary bypass status');                  -- V45.81
INSERT INTO DIAGNOSES_ICD VALUES (101, 2002, 1, NULL, 'Chest pain, unspecified');                         -- no code: the text is kept
INSERT INTO DIAGNOSES_ICD VALUES (101, 2002, 2, '250', 'Diabetes mellitus');                              -- a category: unchanged

CREATE TABLE D_LABITEMS (ITEMID INTEGER, LABEL TEXT, LOINC_CODE TEXT);
INSERT INTO D_LABITEMS VALUES (50912, 'Creatinine', '2160-0');
INSERT INTO D_LABITEMS VALUES (51265, 'Platelet Count', '777-3');
INSERT INTO D_LABITEMS VALUES (50960, 'Magnesium', '19123-9');
INSERT INTO D_LABITEMS VALUES (50970, 'Phosphate', '2777-1');
INSERT INTO D_LABITEMS VALUES (50971, 'Potassium', '2823-3');
INSERT INTO D_LABITEMS VALUES (50983, 'Sodium', '2951-2');
INSERT INTO D_LABITEMS VALUES (51006, 'Urea Nitrogen', '3094-0');
INSERT INTO D_LABITEMS VALUES (50931, 'Glucose', '2345-7');
INSERT INTO D_LABITEMS VALUES (50889, 'C-Reactive Protein', '1988-5');
INSERT INTO D_LABITEMS VALUES (51009, 'Vitamin B12', '2132-9');

-- no primary key: rows are told apart by (HADM_ID, ITEMID) and their order in CHARTTIME
CREATE TABLE LABEVENTS (SUBJECT_ID INTEGER, HADM_ID INTEGER, ITEMID INTEGER, CHARTTIME TEXT,
                        VALUE TEXT, VALUEUOM TEXT, STORETIME TEXT);
INSERT INTO LABEVENTS VALUES (101, 2001, 50912, '2024-01-15 09:00:00', '1.2', 'mg/dL', '2024-01-15 10:00:00');  -- occurrence 1
INSERT INTO LABEVENTS VALUES (101, 2001, 50912, '2024-01-16 09:00:00', '1.0', 'mg/dL', '2024-01-16 10:00:00');  -- occurrence 2
INSERT INTO LABEVENTS VALUES (101, 2001, 51265, '2024-01-15 09:00:00', '25,000', 'K/uL', '2024-01-15 10:00:00'); -- thousands separator
INSERT INTO LABEVENTS VALUES (101, 2001, 50960, '2024-01-15 09:00:00', 'HOLD', NULL, '2024-01-15 10:00:00');     -- temp-unknown
INSERT INTO LABEVENTS VALUES (101, 2001, 50970, '2024-01-15 09:00:00', 'NotDone', NULL, '2024-01-15 10:00:00');  -- not-performed, cancelled
INSERT INTO LABEVENTS VALUES (101, 2001, 50971, '2024-01-15 09:00:00', 'ERROR', NULL, '2024-01-15 10:00:00');    -- error, cancelled
INSERT INTO LABEVENTS VALUES (101, 2001, 50983, '2024-01-15 09:00:00', '见报告', NULL, '2024-01-15 10:00:00');    -- "see the report": unknown
INSERT INTO LABEVENTS VALUES (101, 2001, 51006, '2024-01-15 09:00:00', 'GREATER THAN 2000', 'mg/dL', '2024-01-15 10:00:00'); -- > 2000
INSERT INTO LABEVENTS VALUES (101, 2001, 50931, '2024-01-15 09:00:00', '大于2000', 'mg/dL', '2024-01-15 10:00:00');          -- > 2000
INSERT INTO LABEVENTS VALUES (101, 2001, 50889, '2024-01-15 09:00:00', '小于0.1', 'mg/L', '2024-01-15 10:00:00');            -- < 0.1
-- a 5000-digit value: more than a FHIR decimal carries, quarantined
INSERT INTO LABEVENTS VALUES (101, 2001, 51009, '2024-01-15 09:00:00', replace(hex(zeroblob(2500)), '0', '7'), 'pg/mL', '2024-01-15 10:00:00');
-- two rows sharing natural key and CHARTTIME: their occurrence numbers would not be stable, both quarantined
INSERT INTO LABEVENTS VALUES (101, 2002, 50912, '2024-07-05 06:00:00', '1.1', 'mg/dL', '2024-07-05 07:00:00');
INSERT INTO LABEVENTS VALUES (101, 2002, 50912, '2024-07-05 06:00:00', '1.3', 'mg/dL', '2024-07-05 07:00:00');
-- drawn in 1999 from a patient born in 2000: mapping alone cannot tell (the birth date is in another
-- block); a publish compares it with the published patient's birth date and quarantines it
INSERT INTO LABEVENTS VALUES (106, 2009, 50912, '1999-06-01 08:00:00', '0.9', 'mg/dL', '1999-06-01 09:00:00');
-- a quality-control item: excluded by where, never read
INSERT INTO LABEVENTS VALUES (101, 2001, 99999, '2024-01-15 09:00:00', 'QC', NULL, '2024-01-15 10:00:00');

CREATE TABLE PRESCRIPTIONS (SUBJECT_ID INTEGER, HADM_ID INTEGER, STARTDATE TEXT, ORDER_REF TEXT, DRUG TEXT,
                            NDC INTEGER, DOSE_VAL_RX TEXT, DOSE_UNIT_RX TEXT, ROUTE_FORM TEXT, REFILLS TEXT);
INSERT INTO PRESCRIPTIONS VALUES (101, 2001, '2024-01-15', 'RX#000123/2024', 'Acetaminophen', 904198861, '325-650', 'mg', 'PO/TAB', '2');   -- doseRange
INSERT INTO PRESCRIPTIONS VALUES (101, 2001, '2024-01-15', 'RX#000124/2024', 'Heparin', 63323026201, '25,000', 'U', 'SC/INJ', '0');       -- 25000
INSERT INTO PRESCRIPTIONS VALUES (101, 2001, '2024-01-16', 'RX#000125/2024', 'Acetaminophen', 904198861, '650', 'mg', 'PO/TAB', NULL);     -- occurrence 2
INSERT INTO PRESCRIPTIONS VALUES (101, 2002, '2024-07-05', 'RX#000126/2024', 'Insulin', 2875001, 'see chart', 'U', 'SC/INJ', '1');       -- fits no dose form
INSERT INTO PRESCRIPTIONS VALUES (101, 2002, '2024-07-05', 'RX#000127/2024', 'Morphine', 409189001, '2', 'mg', 'IV/INJ', '99999999999'); -- beyond a FHIR integer
CREATE TABLE PRESCRIPTIONS_ARCHIVE (SUBJECT_ID INTEGER, HADM_ID INTEGER, STARTDATE TEXT, ORDER_REF TEXT, DRUG TEXT,
                                    NDC INTEGER, DOSE_VAL_RX TEXT, DOSE_UNIT_RX TEXT, ROUTE_FORM TEXT, REFILLS TEXT);
INSERT INTO PRESCRIPTIONS_ARCHIVE VALUES (104, 2005, '2024-11-03', 'RX#000088/2024', 'Aspirin', 63981056, '81', 'mg', 'PO/TAB', '0');
