-- Pricing catalogue: list prices of OpenAI, Anthropic, Google Gemini and xAI models,
-- loaded into public.cost_estimates (table created by an earlier migration).
--
-- * All prices are USD per 1M tokens (MTok), standard/on-demand tier, no batch,
--   flex or priority discounts, no regional uplift.
-- * cached_input_usd_per_mtok = cache read / cached input price (null = same as input).
--   cache_write_usd_per_mtok  = cache write price (Anthropic: 5-minute cache write).
-- * long_context_threshold: prompt size in tokens above which the long_* prices apply
--   to the whole call (null = no long-context tier).
-- * Gemini output prices include thinking tokens (billed as output); Gemini cached
--   prices are the context-caching read price (storage per hour is not modelled).
-- * Prices are never updated in place: a price change is made by closing the old row
--   (set effective_to) and inserting a new row with the new price and effective_from.
-- * Only canonical model names are listed. Dated snapshot names such as
--   gpt-4o-2024-08-06 or claude-sonnet-4-5-20250929 resolve to the longest known
--   prefix (gpt-4o, claude-sonnet-4-5). Some extra rows (e.g. o3-mini, gpt-4-turbo,
--   grok-3-fast) exist mainly so that such names do not fall back to a shorter,
--   differently priced prefix (o3, gpt-4, grok-3).
-- * Figures checked on 2026-11-22 against the providers' pricing pages and the
--   LiteLLM catalogue (BerriAI/litellm model_prices_and_context_window.json).

-- ===== OpenAI (https://openai.com/api/pricing) =====
insert into public.cost_estimates (provider, model, input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok, cache_write_usd_per_mtok, long_context_threshold, long_input_usd_per_mtok, long_output_usd_per_mtok, long_cached_input_usd_per_mtok, long_cache_write_usd_per_mtok, source_url, checked_on) values
  -- legacy GPT-3.5 / GPT-4 (no prompt caching)
  ('openai', 'gpt-3.5-turbo',          0.50,    1.50,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-3.5-turbo-16k',      3.00,    4.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-3.5-turbo-instruct', 1.50,    2.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-4',                 30.00,   60.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-4-32k',             60.00,  120.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-4-turbo',           10.00,   30.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  -- dated snapshots priced differently from the name they would otherwise resolve to
  ('openai', 'gpt-4-1106-preview',    10.00,   30.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-4-0125-preview',    10.00,   30.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-4o-2024-05-13',      5.00,   15.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  -- GPT-4o / GPT-4.1
  ('openai', 'gpt-4o',                 2.50,   10.00,  1.25,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-4o-mini',            0.15,    0.60,  0.075,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-4.1',                2.00,    8.00,  0.50,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-4.1-mini',           0.40,    1.60,  0.10,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-4.1-nano',           0.10,    0.40,  0.025,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  -- o-series reasoning models
  ('openai', 'o1',                    15.00,   60.00,  7.50,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'o1-mini',                1.10,    4.40,  0.55,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'o1-pro',               150.00,  600.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'o3',                     2.00,    8.00,  0.50,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'o3-mini',                1.10,    4.40,  0.55,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'o3-pro',                20.00,   80.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'o3-deep-research',      10.00,   40.00,  2.50,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'o4-mini',                1.10,    4.40,  0.275,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'o4-mini-deep-research',  2.00,    8.00,  0.50,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  -- GPT-5 family (gpt-5-codex, gpt-5-chat-latest -> gpt-5; gpt-5.1-codex(-max) -> gpt-5.1; gpt-5.2-codex -> gpt-5.2)
  ('openai', 'gpt-5',                  1.25,   10.00,  0.125,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5-mini',             0.25,    2.00,  0.025,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5-nano',             0.05,    0.40,  0.005,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5-pro',             15.00,  120.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.1',                1.25,   10.00,  0.125,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.1-codex-mini',     0.25,    2.00,  0.025,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.2',                1.75,   14.00,  0.175,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.2-pro',           21.00,  168.00,  null,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.3',                1.75,   14.00,  0.175,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.4',                2.50,   15.00,  0.25,   null, 272000,  5.00,  22.50,  0.50,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.4-mini',           0.75,    4.50,  0.075,  null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.4-nano',           0.20,    1.25,  0.02,   null, null,   null,   null,  null,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.4-pro',           30.00,  180.00,  3.00,   null, 272000, 60.00, 270.00,  6.00,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.5',                5.00,   30.00,  0.50,   null, 272000, 10.00,  45.00,  1.00,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.5-pro',           30.00,  180.00,  3.00,   null, 272000, 60.00, 270.00,  6.00,  null, 'https://openai.com/api/pricing', '2026-11-22'),
  -- GPT-5.6 tiers (plain gpt-5.6 is priced as Sol)
  ('openai', 'gpt-5.6',                5.00,   30.00,  0.50,   6.25, 272000, 10.00,  45.00,  1.00, 12.50, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.6-sol',            5.00,   30.00,  0.50,   6.25, 272000, 10.00,  45.00,  1.00, 12.50, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.6-terra',          2.50,   15.00,  0.25,  3.125, 272000,  5.00,  22.50,  0.50,  6.25, 'https://openai.com/api/pricing', '2026-11-22'),
  ('openai', 'gpt-5.6-luna',           1.00,    6.00,  0.10,   1.25, 272000,  2.00,   9.00,  0.20,  2.50, 'https://openai.com/api/pricing', '2026-11-22');

-- ===== Anthropic (https://www.anthropic.com/pricing) =====
-- cache_write = 5-minute cache write (1.25x input), cached_input = cache hit/refresh (0.1x input),
-- except where Anthropic publishes other figures (Haiku 3: 0.30 / 0.03; Opus 5.5 and
-- Fable 5.1: cheaper cache reads).
insert into public.cost_estimates (provider, model, input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok, cache_write_usd_per_mtok, long_context_threshold, long_input_usd_per_mtok, long_output_usd_per_mtok, long_cached_input_usd_per_mtok, long_cache_write_usd_per_mtok, source_url, checked_on) values
  -- Claude 3 / 3.5 / 3.7 (legacy)
  ('anthropic', 'claude-3-haiku',      0.25,   1.25,  0.03,   0.30,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-3-opus',      15.00,  75.00,  1.50,  18.75,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-3-5-haiku',    0.80,   4.00,  0.08,   1.00,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-3-5-sonnet',   3.00,  15.00,  0.30,   3.75,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-3-7-sonnet',   3.00,  15.00,  0.30,   3.75,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  -- Claude 4.x
  ('anthropic', 'claude-opus-4',      15.00,  75.00,  1.50,  18.75,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-opus-4-1',    15.00,  75.00,  1.50,  18.75,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-opus-4-5',     5.00,  25.00,  0.50,   6.25,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-opus-4-6',     5.00,  25.00,  0.50,   6.25,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-opus-4-7',     5.00,  25.00,  0.50,   6.25,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-opus-4-8',     5.00,  25.00,  0.50,   6.25,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-sonnet-4',     3.00,  15.00,  0.30,   3.75,  200000, 6.00, 22.50,   0.60,  7.50,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-sonnet-4-5',   3.00,  15.00,  0.30,   3.75,  200000, 6.00, 22.50,   0.60,  7.50,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-sonnet-4-6',   3.00,  15.00,  0.30,   3.75,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-haiku-4-5',    1.00,   5.00,  0.10,   1.25,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  -- Claude 5.x
  ('anthropic', 'claude-opus-5',       5.00,  25.00,  0.50,   6.25,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-opus-5-5',     4.00,  20.00,  0.20,   5.00,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-sonnet-5',     2.00,  10.00,  0.20,   2.50,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-sonnet-5-5',   2.00,  10.00,  0.20,   2.50,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-haiku-5-5',    0.10,   0.50,  0.01,  0.125,  100000, 0.50,  2.50,   0.05, 0.625,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-fable-5',     10.00,  50.00,  1.00,  12.50,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22'),
  ('anthropic', 'claude-fable-5-1',   10.00,  50.00,  0.25,  12.50,  null,   null,  null,   null,  null,  'https://www.anthropic.com/pricing', '2026-11-22');

-- ===== Google Gemini (https://ai.google.dev/gemini-api/docs/pricing) =====
-- Text/image/video input prices (audio input is priced higher and not modelled here).
insert into public.cost_estimates (provider, model, input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok, cache_write_usd_per_mtok, long_context_threshold, long_input_usd_per_mtok, long_output_usd_per_mtok, long_cached_input_usd_per_mtok, long_cache_write_usd_per_mtok, source_url, checked_on) values
  -- legacy Gemini 1.5 (long tier above 128k tokens)
  ('google', 'gemini-1.5-flash',       0.075,  0.30,  0.01875, null, 128000, 0.15,  0.60,  0.0375, null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  ('google', 'gemini-1.5-pro',         1.25,   5.00,  0.3125,  null, 128000, 2.50, 10.00,  0.625,  null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  -- Gemini 2.0
  ('google', 'gemini-2.0-flash',       0.10,   0.40,  0.025,   null, null,   null,  null,  null,   null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  ('google', 'gemini-2.0-flash-lite',  0.075,  0.30,  null,    null, null,   null,  null,  null,   null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  -- Gemini 2.5
  ('google', 'gemini-2.5-flash',       0.30,   2.50,  0.03,    null, null,   null,  null,  null,   null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  ('google', 'gemini-2.5-flash-lite',  0.10,   0.40,  0.01,    null, null,   null,  null,  null,   null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  ('google', 'gemini-2.5-pro',         1.25,  10.00,  0.125,   null, 200000, 2.50, 15.00,  0.25,   null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  -- Gemini 3.x
  ('google', 'gemini-3-pro-preview',   2.00,  12.00,  0.20,    null, 200000, 4.00, 18.00,  0.40,   null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  ('google', 'gemini-3.1-pro-preview', 2.00,  12.00,  0.20,    null, 200000, 4.00, 18.00,  0.40,   null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  ('google', 'gemini-3-flash-preview', 0.50,   3.00,  0.05,    null, null,   null,  null,  null,   null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  ('google', 'gemini-3.1-flash-lite',  0.25,   1.50,  0.025,   null, null,   null,  null,  null,   null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22'),
  ('google', 'gemini-3.5-flash',       1.50,   9.00,  0.15,    null, null,   null,  null,  null,   null, 'https://ai.google.dev/gemini-api/docs/pricing', '2026-11-22');

-- ===== xAI (https://docs.x.ai/docs/models) =====
-- grok-4-fast covers grok-4-fast-reasoning / -non-reasoning; grok-4-1-fast likewise;
-- grok-4.20 covers grok-4.20-0309-reasoning / -non-reasoning / multi-agent.
insert into public.cost_estimates (provider, model, input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok, cache_write_usd_per_mtok, long_context_threshold, long_input_usd_per_mtok, long_output_usd_per_mtok, long_cached_input_usd_per_mtok, long_cache_write_usd_per_mtok, source_url, checked_on) values
  ('xai', 'grok-3',            3.00,  15.00,  0.75,   null, null,   null,  null,  null,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-3-fast',       5.00,  25.00,  1.25,   null, null,   null,  null,  null,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-3-mini',       0.30,   0.50,  0.075,  null, null,   null,  null,  null,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-3-mini-fast',  0.60,   4.00,  0.15,   null, null,   null,  null,  null,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-4',            3.00,  15.00,  0.75,   null, 128000, 6.00, 30.00,  null,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-4-fast',       0.20,   0.50,  0.05,   null, 128000, 0.40,  1.00,  null,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-4-1-fast',     0.20,   0.50,  0.05,   null, 128000, 0.40,  1.00,  null,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-code-fast-1',  0.20,   1.50,  0.02,   null, null,   null,  null,  null,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-4.20',         2.00,   6.00,  0.20,   null, null,   null,  null,  null,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-4.3',          1.25,   2.50,  0.20,   null, 200000, 2.50,  5.00,  0.40,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-4.5',          2.00,   6.00,  0.50,   null, 200000, 4.00, 12.00,  1.00,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-4.6',          2.00,   6.00,  0.50,   null, 200000, 4.00, 12.00,  1.00,  null, 'https://docs.x.ai/docs/models', '2026-11-22'),
  ('xai', 'grok-4.7',          2.00,   6.00,  0.50,   null, 200000, 4.00, 12.00,  1.00,  null, 'https://docs.x.ai/docs/models', '2026-11-22');
