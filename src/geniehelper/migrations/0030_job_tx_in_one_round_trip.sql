-- A job's transaction opens in one round trip: BEGIN and this call go as one simple query, which
-- returns no rows to read, so the fence answers by raising (SQLSTATE GHL01: the runtime's
-- LeaseLost) where begin_job_tx (0010) returns false.
create function enter_job_tx(p_user_id uuid, p_job_id uuid, p_attempt integer) returns void
language plpgsql as $$
begin
    if not begin_job_tx(p_user_id, p_job_id, p_attempt) then
        raise exception 'attempt % no longer owns job %', p_attempt, p_job_id using errcode = 'GHL01';
    end if;
end;
$$;
grant execute on function enter_job_tx(uuid, uuid, integer) to geniehelper_app;
