-- 0016 platform addresses come from the server's registry (PLATFORM_API_URLS), never from a row
--
-- api_base_url was creator-writable, and publishing sent the decrypted token to it: any creator (or a
-- bug writing that column) could send a token to any host. A connection now names only its platform.
alter table platform_connections drop column api_base_url;
